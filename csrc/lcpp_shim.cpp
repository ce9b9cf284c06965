// Thin extern "C" shim: llama.cpp's C++ `common` helpers behind a C ABI that never
// throws, plus the few per-token loops that must not run in Python.
#include "lcpp_shim.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "chat.h"
#include "lcpp_grammar.h"
#include "json-schema-to-grammar.h"
#include "json.h"

struct lcpp_chat_templates {
    common_chat_templates_ptr ptr;
    std::string builtin;  // a llama.cpp built-in template's name, rendered by llama_chat_apply_template
};

namespace {

char * copy_string(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
    }
    return out;
}

// Run `body`, storing its string result (or the exception's message) in *out.
template <typename Body>
int guarded(char ** out, Body && body) {
    try {
        *out = copy_string(body());
        return 0;
    } catch (const std::exception & e) {
        *out = copy_string(e.what());
    } catch (...) {
        *out = copy_string("unknown C++ exception");
    }
    return 1;
}

common_json trigger_to_json(const common_grammar_trigger & trigger) {
    common_json item = common_json::object();
    item["type"] = static_cast<int>(trigger.type);
    item["value"] = trigger.value;
    item["token"] = static_cast<int>(trigger.token);
    return item;
}

// Penalties (see lcpp_sampler_init_penalties): same state and arithmetic as llama.cpp's.
struct penalties_state {
    int32_t n_vocab;
    int32_t last_n;
    float repeat;
    float freq;
    float present;
    std::deque<llama_token> recent;
    std::unordered_map<llama_token, int> count;
};

const char * penalties_name(const struct llama_sampler *) { return "lcpp-penalties"; }

void penalties_accept(struct llama_sampler * smpl, llama_token token) {
    auto * state = static_cast<penalties_state *>(smpl->ctx);
    if (state->last_n <= 0) {
        return;
    }
    state->count[token]++;
    if (state->recent.size() >= static_cast<size_t>(state->last_n)) {
        const llama_token old = state->recent.front();
        state->recent.pop_front();
        if (--state->count[old] == 0) {
            state->count.erase(old);
        }
    }
    state->recent.push_back(token);
}

void penalise(const penalties_state & state, llama_token_data & candidate, int count) {
    if (candidate.logit <= 0) {
        candidate.logit *= state.repeat;
    } else {
        candidate.logit /= state.repeat;
    }
    candidate.logit -= float(count) * state.freq + float(count > 0) * state.present;
}

void penalties_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p) {
    const auto * state = static_cast<const penalties_state *>(smpl->ctx);
    if (state->last_n <= 0 || (state->repeat == 1.0f && state->freq == 0.0f && state->present == 0.0f)) {
        return;
    }
    bool by_id = true;  // candidates laid out as the vocabulary: data[t].id == t for every t we touch
    for (const auto & entry : state->count) {
        const auto token = static_cast<size_t>(entry.first);
        by_id = by_id && token < cur_p->size && cur_p->data[token].id == entry.first;
    }
    if (by_id) {
        for (const auto & entry : state->count) {
            penalise(*state, cur_p->data[entry.first], entry.second);
        }
    } else {
        for (size_t i = 0; i < cur_p->size; ++i) {
            const auto found = state->count.find(cur_p->data[i].id);
            if (found != state->count.end()) {
                penalise(*state, cur_p->data[i], found->second);
            }
        }
    }
    cur_p->sorted = false;
}

void penalties_reset(struct llama_sampler * smpl) {
    auto * state = static_cast<penalties_state *>(smpl->ctx);
    state->recent.clear();
    state->count.clear();
}

struct llama_sampler * penalties_clone(const struct llama_sampler * smpl);

void penalties_free(struct llama_sampler * smpl) { delete static_cast<penalties_state *>(smpl->ctx); }

llama_sampler_i make_penalties_iface() {
    llama_sampler_i iface{};
    iface.name = penalties_name;
    iface.accept = penalties_accept;
    iface.apply = penalties_apply;
    iface.reset = penalties_reset;
    iface.clone = penalties_clone;
    iface.free = penalties_free;
    return iface;
}

llama_sampler_i penalties_iface = make_penalties_iface();

struct llama_sampler * penalties_clone(const struct llama_sampler * smpl) {
    const auto * state = static_cast<const penalties_state *>(smpl->ctx);
    return llama_sampler_init(&penalties_iface, new penalties_state(*state));
}

}  // namespace

extern "C" {

struct llama_sampler * lcpp_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                   float present) {
    try {
        auto * state = new penalties_state{n_vocab, std::max(last_n, 0), repeat, freq, present, {}, {}};
        return llama_sampler_init(&penalties_iface, state);
    } catch (...) {
        return nullptr;
    }
}


const char * lcpp_package_version(void) { return LCPP_PACKAGE_VERSION; }

void lcpp_string_free(char * s) { std::free(s); }

int lcpp_chat_templates_init(const struct llama_model * model, const char * template_override,
                             lcpp_chat_templates ** out, char ** err) {
    *out = nullptr;
    *err = nullptr;
    try {
        const std::string override_text = template_override ? template_override : "";
        std::string builtin;
        if (!override_text.empty() && override_text != "chatml" && override_text.find("{{") == std::string::npos &&
            override_text.find("{%") == std::string::npos) {
            std::vector<const char *> names(llama_chat_builtin_templates(nullptr, 0));
            llama_chat_builtin_templates(names.data(), names.size());
            std::string known;
            for (const char * name : names) {
                if (override_text == name) {
                    builtin = name;
                }
                known += (known.empty() ? "" : ", ") + std::string(name);
            }
            if (builtin.empty()) {
                *err = copy_string("'" + override_text +
                                   "' is neither a Jinja chat template nor a built-in template name (" + known + ")");
                return 1;
            }
        }
        auto tmpls = common_chat_templates_init(model, override_text);
        if (!tmpls) {
            *err = copy_string("no chat template could be loaded");
            return 1;
        }
        *out = new lcpp_chat_templates{std::move(tmpls), builtin};
        return 0;
    } catch (const std::exception & e) {
        *err = copy_string(e.what());
    } catch (...) {
        *err = copy_string("unknown C++ exception");
    }
    return 1;
}

void lcpp_chat_templates_free(lcpp_chat_templates * tmpls) { delete tmpls; }

int lcpp_chat_apply(const lcpp_chat_templates * tmpls, const char * request_json, char ** out) {
    return guarded(out, [&] {
        const common_json request = common_json::parse(request_json);
        common_chat_templates_inputs inputs;
        inputs.use_jinja = tmpls->builtin.empty();
        inputs.messages = common_chat_msgs_parse_oaicompat(request.at("messages"));
        if (request.contains("tools") && !request.at("tools").is_null()) {
            inputs.tools = common_chat_tools_parse_oaicompat(request.at("tools"));
        }
        if (request.contains("tool_choice")) {
            inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(request.at("tool_choice").get<std::string>());
        }
        inputs.parallel_tool_calls = request.value("parallel_tool_calls", false);
        inputs.add_generation_prompt = request.value("add_generation_prompt", true);
        if (request.contains("continue_final_message")) {
            inputs.continue_final_message = common_chat_continuation_parse(request.at("continue_final_message"));
        }
        if (request.contains("json_schema") && !request.at("json_schema").is_null()) {
            inputs.json_schema = request.at("json_schema").dump();
        }
        inputs.grammar = request.value("grammar", std::string());
        inputs.reasoning_format = common_reasoning_format_from_name(request.value("reasoning_format", "auto"));
        inputs.enable_thinking = request.value("enable_thinking", true);
        if (request.contains("chat_template_kwargs")) {
            for (const auto & item : request.at("chat_template_kwargs").items()) {
                inputs.chat_template_kwargs[item.key()] = item.value().dump();
            }
        }

        if (!inputs.use_jinja && (!inputs.tools.empty() || inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE)) {
            throw std::invalid_argument("the built-in chat template '" + tmpls->builtin +
                                        "' cannot show tools or continue a turn: use a Jinja template");
        }
        const common_chat_params params = common_chat_templates_apply(tmpls->ptr.get(), inputs);
        common_json result = common_json::object();
        result["prompt"] = params.prompt;
        result["grammar"] = params.grammar;
        result["grammar_lazy"] = params.grammar_lazy;
        common_json triggers = common_json::array();
        for (const auto & trigger : params.grammar_triggers) {
            triggers.push_back(trigger_to_json(trigger));
        }
        result["grammar_triggers"] = triggers;
        result["preserved_tokens"] = params.preserved_tokens;
        result["additional_stops"] = params.additional_stops;
        result["format"] = static_cast<int>(params.format);
        result["format_name"] = std::string(common_chat_format_name(params.format));
        result["generation_prompt"] = params.generation_prompt;
        result["parser"] = params.parser;
        result["supports_thinking"] = params.supports_thinking;
        result["thinking_start_tag"] = params.thinking_start_tag;
        result["thinking_end_tag"] = params.thinking_end_tags.empty() ? std::string() : params.thinking_end_tags[0];
        return result.dump();
    });
}

int lcpp_chat_parse(const char * params_json, const char * text, bool is_partial, char ** out) {
    return guarded(out, [&] {
        const common_json request = common_json::parse(params_json);
        common_chat_parser_params params;
        params.format = static_cast<common_chat_format>(request.value("format", 0));
        params.generation_prompt = request.value("generation_prompt", std::string());
        params.parse_tool_calls = request.value("parse_tool_calls", true);
        const std::string parser = request.value("parser", std::string());
        if (!parser.empty()) {
            params.parser.load(parser);
        }
        const common_chat_msg msg = common_chat_parse(text, is_partial, params);
        return msg.to_json_oaicompat().dump();
    });
}

int32_t lcpp_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                      llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special,
                      char ** error) {
    *error = nullptr;
    try {
        return llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special);
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while tokenizing");
    }
    return INT32_MIN;
}

bool lcpp_abort_when_flag_set(void * flag) {
    return *static_cast<volatile int *>(flag) != 0;
}

void lcpp_batch_add(struct llama_batch * batch, llama_token token, llama_pos pos, llama_seq_id seq_id, bool logits) {
    const int32_t i = batch->n_tokens;
    batch->token[i] = token;
    batch->pos[i] = pos;
    batch->n_seq_id[i] = 1;
    batch->seq_id[i][0] = seq_id;
    batch->logits[i] = logits ? 1 : 0;
    batch->n_tokens = i + 1;
}

int32_t lcpp_decode_sequence(struct llama_context * ctx, struct llama_batch * batch, int32_t n_batch,
                             const llama_token * tokens, int32_t n, llama_pos pos0, llama_seq_id seq_id) {
    for (int32_t start = 0; start < n; start += n_batch) {
        const int32_t end = std::min(n, start + n_batch);
        batch->n_tokens = 0;
        for (int32_t i = start; i < end; ++i) {
            lcpp_batch_add(batch, tokens[i], pos0 + i, seq_id, i == n - 1);
        }
        const int32_t status = llama_decode(ctx, *batch);
        if (status != 0) {
            return status;
        }
    }
    return 0;
}

// The candidates a chain samples from: the whole vocabulary in id order, or, when `top` > 0, only
// the `top` highest logits (ties to the lower id), in id order.  The caller sets `top` only where
// the chain's choice cannot depend on any other token (see SamplerChain.prefilter): one pass that
// skips each block of 64 logits none of which beats the current `top`-th best.
extern "C++" llama_token_data_array lcpp_candidates(const float * logits, int32_t n_vocab, int32_t top,
                                                    std::vector<llama_token_data> & out) {
    if (top <= 0 || static_cast<int64_t>(top) * 8 >= n_vocab) {
        out.resize(static_cast<size_t>(n_vocab));
        for (int32_t i = 0; i < n_vocab; ++i) {
            out[static_cast<size_t>(i)] = llama_token_data{i, logits[i], 0.0f};
        }
        return llama_token_data_array{out.data(), out.size(), -1, false};
    }
    const auto lower = [](const llama_token_data & a, const llama_token_data & b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };  // a min-heap under this order keeps its weakest (lowest logit, then highest id) in front
    out.clear();
    for (int32_t i = 0; i < top; ++i) {
        out.push_back(llama_token_data{i, logits[i], 0.0f});
    }
    std::make_heap(out.begin(), out.end(), lower);
    float threshold = out.front().logit;
    const auto offer = [&](int32_t i) {
        if (logits[i] > threshold) {
            std::pop_heap(out.begin(), out.end(), lower);
            out.back() = llama_token_data{i, logits[i], 0.0f};
            std::push_heap(out.begin(), out.end(), lower);
            threshold = out.front().logit;
        }
    };
    constexpr int32_t block = 64;  // a count (not a bool) of the block's hits: compilers vectorize it
    int32_t i = top;
    for (; i + block <= n_vocab; i += block) {
        const float bar = threshold;
        int32_t hits = 0;
        for (int32_t j = 0; j < block; ++j) {
            hits += logits[i + j] > bar;
        }
        if (hits > 0) {
            for (int32_t j = 0; j < block; ++j) {
                offer(i + j);
            }
        }
    }
    for (; i < n_vocab; ++i) {
        offer(i);
    }
    std::sort(out.begin(), out.end(), [](const llama_token_data & a, const llama_token_data & b) { return a.id < b.id; });
    return llama_token_data_array{out.data(), out.size(), -1, false};
}

namespace {

// The candidates of this thread's last final choice (see lcpp_note_choice).
struct last_choice {
    const llama_token_data * data = nullptr;
    size_t                   size = 0;
    bool                     greedy = false;
};

thread_local last_choice g_last_choice;

}  // namespace

extern "C++" void lcpp_note_choice(const llama_token_data_array & final, struct llama_sampler * chain) {
    const int32_t n = std::strcmp(llama_sampler_name(chain), "chain") == 0 ? llama_sampler_chain_n(chain) : 0;
    const struct llama_sampler * last = n > 0 ? llama_sampler_chain_get(chain, n - 1) : chain;
    g_last_choice = {final.data, final.size, std::strcmp(llama_sampler_name(last), "greedy") == 0};
}

llama_token lcpp_sample(struct llama_sampler * chain, struct llama_sampler * grammar, struct llama_context * ctx,
                        int32_t idx, int32_t top, char ** error) {
    *error = nullptr;
    try {
        if (grammar != nullptr && lcpp_is_grammar_sampler(grammar)) {
            return lcpp_grammar_sample(chain, grammar, ctx, idx, top);
        }
        const float * logits = llama_get_logits_ith(ctx, idx);
        if (logits == nullptr) {
            throw std::runtime_error("no logits at this output index");
        }
        const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
        thread_local std::vector<llama_token_data> candidates;
        llama_token_data_array all = lcpp_candidates(logits, n_vocab, top, candidates);
        llama_sampler_apply(chain, &all);
        if (all.selected < 0 || static_cast<size_t>(all.selected) >= all.size) {
            throw std::runtime_error("the sampler chain selected no token");
        }
        lcpp_note_choice(all, chain);
        if (grammar == nullptr) {
            const llama_token token = all.data[all.selected].id;
            llama_sampler_accept(chain, token);
            return token;
        }
        const auto fill = [&]() { return lcpp_candidates(logits, n_vocab, 0, candidates); };
        llama_token token = all.data[all.selected].id;
        llama_token_data single{token, 1.0f, 0.0f};
        llama_token_data_array one{&single, 1, -1, false};
        llama_sampler_apply(grammar, &one);
        if (std::isinf(single.logit) && single.logit < 0) {  // rejected: constrain, then choose again
            all = fill();
            llama_sampler_apply(grammar, &all);
            llama_sampler_apply(chain, &all);
            token = all.data[all.selected].id;
            lcpp_note_choice(all, chain);
        }
        llama_sampler_accept(grammar, token);
        llama_sampler_accept(chain, token);
        return token;
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while sampling");
    }
    return -1;
}

void lcpp_batch_add_run(struct llama_batch * batch, const llama_token * tokens, int32_t n, llama_pos pos0,
                        llama_seq_id seq_id, bool logits_last) {
    for (int32_t i = 0; i < n; ++i) {
        lcpp_batch_add(batch, tokens[i], pos0 + i, seq_id, logits_last && i == n - 1);
    }
}

int32_t lcpp_sample_many(struct llama_context * ctx, const struct llama_vocab * vocab, int32_t n,
                         struct llama_sampler * const * chains, struct llama_sampler * const * grammars,
                         const int32_t * tops, const int32_t * idxs, llama_token * tokens, bool * eog, char * pieces,
                         int32_t piece_stride, int32_t * piece_lens, char ** error) {
    *error = nullptr;
    int32_t failures = 0;
    for (int32_t i = 0; i < n; ++i) {
        char * reason = nullptr;
        const llama_token token = lcpp_sample(chains[i], grammars[i], ctx, idxs[i], tops[i], &reason);
        tokens[i] = token;
        eog[i] = false;
        piece_lens[i] = 0;
        if (token < 0) {
            ++failures;
            if (*error == nullptr) {
                *error = reason;
            } else {
                std::free(reason);
            }
            continue;
        }
        eog[i] = llama_vocab_is_eog(vocab, token);
        if (!eog[i]) {
            piece_lens[i] = llama_token_to_piece(vocab, token, pieces + static_cast<size_t>(i) * piece_stride,
                                                 piece_stride, 0, false);
        }
    }
    return failures;
}

int32_t lcpp_sample_draft(struct llama_context * ctx, const struct llama_vocab * vocab,
                          struct llama_sampler * chain, struct llama_sampler * grammar, int32_t top, int32_t idx0,
                          const llama_token * draft, int32_t n_draft, llama_token * tokens, char ** error) {
    *error = nullptr;
    int32_t n = 0;
    for (int32_t i = 0; i <= n_draft; ++i) {
        char * reason = nullptr;
        const llama_token token = lcpp_sample(chain, grammar, ctx, idx0 + i, top, &reason);
        if (token < 0) {
            if (n == 0) {
                *error = reason;
                return -1;
            }
            std::free(reason);  // the tokens so far stand; the next step samples this position again
            return n;
        }
        tokens[n++] = token;
        if (i == n_draft || token != draft[i] || llama_vocab_is_eog(vocab, token)) {
            break;
        }
    }
    return n;
}

int lcpp_sampler_accept(struct llama_sampler * smpl, llama_token token, char ** error) {
    *error = nullptr;
    try {
        llama_sampler_accept(smpl, token);
        return 0;
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while accepting a token");
    }
    return 1;
}

float lcpp_sampled_probs(llama_token token, int32_t k, llama_token * top_ids, float * top_probs, int32_t * n_top) {
    *n_top = 0;
    const last_choice & last = g_last_choice;
    if (last.data == nullptr) {
        return NAN;
    }
    thread_local std::vector<llama_token_data> probs;
    probs.clear();
    if (last.greedy) {
        probs.push_back(llama_token_data{token, 0.0f, 1.0f});
    } else {
        float max_logit = -INFINITY;
        for (size_t i = 0; i < last.size; ++i) {
            max_logit = std::max(max_logit, last.data[i].logit);
        }
        double sum = 0.0;
        for (size_t i = 0; i < last.size && std::isfinite(max_logit); ++i) {
            const float p = std::exp(last.data[i].logit - max_logit);
            if (p > 0.0f) {
                probs.push_back(llama_token_data{last.data[i].id, last.data[i].logit, p});
                sum += p;
            }
        }
        for (auto & candidate : probs) {
            candidate.p = static_cast<float>(candidate.p / sum);
        }
    }
    float own = 0.0f;
    for (const auto & candidate : probs) {
        if (candidate.id == token) {
            own = candidate.p;
            break;
        }
    }
    const size_t count = std::min(probs.size(), static_cast<size_t>(std::max(k, 0)));
    std::partial_sort(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(count), probs.end(),
                      [](const llama_token_data & a, const llama_token_data & b) {
                          return a.p > b.p || (a.p == b.p && a.id < b.id);
                      });
    for (size_t i = 0; i < count; ++i) {
        top_ids[i] = probs[i].id;
        top_probs[i] = probs[i].p;
    }
    *n_top = static_cast<int32_t>(count);
    return own;
}

float lcpp_logprobs(struct llama_context * ctx, int32_t idx, int32_t n_vocab, llama_token token, int32_t k,
                    llama_token * top_ids, float * top_logprobs) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr || n_vocab <= 0) {
        return NAN;
    }
    const float max_logit = *std::max_element(logits, logits + n_vocab);
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; ++i) {
        sum += std::exp(static_cast<double>(logits[i] - max_logit));
    }
    const float log_norm = max_logit + static_cast<float>(std::log(sum));
    k = std::max(0, std::min(k, n_vocab));
    if (k > 0) {
        std::vector<llama_token> order(n_vocab);
        for (int32_t i = 0; i < n_vocab; ++i) {
            order[i] = i;
        }
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [logits](llama_token a, llama_token b) { return logits[a] > logits[b]; });
        for (int32_t i = 0; i < k; ++i) {
            top_ids[i] = order[i];
            top_logprobs[i] = logits[order[i]] - log_norm;
        }
    }
    return (token >= 0 && token < n_vocab) ? logits[token] - log_norm : NAN;
}

}  // extern "C"
