// Grammar-constrained sampling at near-unconstrained speed.
//
// llama.cpp checks a grammar against candidates one token at a time, decoding
// each token's text afresh on every call: applied to a 262k-token vocabulary
// that costs tens of milliseconds, more than a decode step of a small model.
// This file keeps llama.cpp's grammar (its parser, rules, stacks and accept
// logic, so the language is exactly the same) and replaces only the search for
// the tokens a grammar state admits:
//
// * a vocabulary index: every token's code points (decoded once, exactly as
//   llama.cpp decodes them) in a prefix tree, so a rejected first character
//   rejects every token that starts with it in one step;
// * per grammar, an interned automaton over llama.cpp's stacks, so the
//   transition for a (state, matching stacks) pair is computed once;
// * per state, a cache of the admitted tokens when the set is small (the
//   structural positions of JSON, where rejections happen);
// * in sampling (lcpp_grammar_sample), the chain's unconstrained choice is
//   checked alone first; when the grammar rejects it, the candidates are
//   taken in descending logit order until enough admitted ones are known for
//   the chain (one for greedy, top_k for top-k sampling), and the full
//   admitted set is computed only when that does not settle it.  Greedy
//   decoding is therefore identical to masking the whole vocabulary.
#include "lcpp_grammar.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "json-schema-to-grammar.h"
#include "json.h"
#include "llama-grammar.h"

namespace {

char * dup_string(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
    }
    return out;
}

// ---------------------------------------------------------------------------
// Reading llama.cpp's grammar elements.  A rule is a run of elements, its
// alternatives separated by ALT and the whole ended by END.  A character set is
// a CHAR, CHAR_NOT or CHAR_ANY element, then CHAR_ALT elements for further
// members; any member may be followed by CHAR_RNG_UPPER, making it a range.

// Whether `e` closes an alternative (the next one starts after it, or the rule ends).
bool closes_alternative(const llama_grammar_element * e) {
    return e->type == LLAMA_GRETYPE_ALT || e->type == LLAMA_GRETYPE_END;
}

bool is_char_set(const llama_grammar_element * e) {
    return e->type == LLAMA_GRETYPE_CHAR || e->type == LLAMA_GRETYPE_CHAR_NOT || e->type == LLAMA_GRETYPE_CHAR_ANY;
}

bool is_terminal(const llama_grammar_element * e) {
    return is_char_set(e) || e->type == LLAMA_GRETYPE_TOKEN || e->type == LLAMA_GRETYPE_TOKEN_NOT;
}

// Whether the character set starting at `set` admits `chr` (a CHAR_NOT set admits
// what its members don't); `*after`, when given, receives the element after the set.
bool char_set_admits(const llama_grammar_element * set, uint32_t chr, const llama_grammar_element ** after) {
    const bool negated = set->type == LLAMA_GRETYPE_CHAR_NOT;
    bool member = false;
    const llama_grammar_element * e = set;
    do {
        const bool any = e->type == LLAMA_GRETYPE_CHAR_ANY;
        const uint32_t low = e->value;
        uint32_t high = e->value;
        ++e;
        if (e->type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
            high = e->value;
            ++e;
        }
        member = member || any || (low <= chr && chr <= high);
        if (member && after == nullptr) {
            return !negated;
        }
    } while (e->type == LLAMA_GRETYPE_CHAR_ALT);
    if (after != nullptr) {
        *after = e;
    }
    return member != negated;
}

// Adds to `out` (once each) every stack that `stack` becomes without reading
// input: rule references on top are replaced by each of the rule's alternatives
// until a terminal, or nothing, is on top.
void expand_to_terminals(const llama_grammar_rules & rules, const llama_grammar_stack & stack,
                         llama_grammar_stacks & out) {
    std::vector<llama_grammar_stack> pending{stack};
    std::set<llama_grammar_stack> visited;
    while (!pending.empty()) {
        llama_grammar_stack current = std::move(pending.back());
        pending.pop_back();
        if (!visited.insert(current).second) {
            continue;
        }
        if (current.empty() || current.back()->type != LLAMA_GRETYPE_RULE_REF) {
            if (!current.empty() && !is_terminal(current.back())) {
                throw std::runtime_error("malformed grammar stack");
            }
            if (std::find(out.begin(), out.end(), current) == out.end()) {
                out.push_back(std::move(current));
            }
            continue;
        }
        const llama_grammar_element * reference = current.back();
        current.pop_back();
        if (!closes_alternative(reference + 1)) {
            current.push_back(reference + 1);  // where to go on once the rule is done
        }
        const llama_grammar_element * alternative = rules[static_cast<size_t>(reference->value)].data();
        for (;;) {
            llama_grammar_stack branch = current;
            if (!closes_alternative(alternative)) {
                branch.push_back(alternative);
            }
            pending.push_back(std::move(branch));
            const llama_grammar_element * e = alternative;
            while (!closes_alternative(e)) {
                ++e;
            }
            if (e->type == LLAMA_GRETYPE_END) {
                break;
            }
            alternative = e + 1;
        }
    }
}

// The code points of a whole token as llama.cpp's grammar reads them: a lead
// byte's high nibble gives the sequence length and continuation bytes contribute
// their low six bits.  False for what llama.cpp would treat as invalid or
// incomplete (and for a NUL byte): those tokens are left to llama.cpp's check.
bool decode_piece(const std::string & piece, std::vector<uint32_t> & out) {
    out.clear();
    if (piece.empty() || std::memchr(piece.data(), 0, piece.size()) != nullptr) {
        return false;
    }
    size_t i = 0;
    while (i < piece.size()) {
        const auto lead = static_cast<uint8_t>(piece[i++]);
        uint32_t value;
        size_t continuation;
        switch (lead >> 4) {
            case 0x8: case 0x9: case 0xA: case 0xB:
                return false;  // a continuation byte cannot start a character
            case 0xC: case 0xD:
                value = lead & 0x1Fu;
                continuation = 1;
                break;
            case 0xE:
                value = lead & 0x0Fu;
                continuation = 2;
                break;
            case 0xF:
                value = lead & 0x0Fu;  // llama.cpp keeps four bits of any 0xF_ lead byte
                continuation = 3;
                break;
            default:
                value = lead;
                continuation = 0;
        }
        if (piece.size() - i < continuation) {
            return false;
        }
        for (; continuation > 0; --continuation) {
            value = (value << 6) | (static_cast<uint8_t>(piece[i++]) & 0x3Fu);
        }
        out.push_back(value);
    }
    return true;
}

}  // namespace

// ---------------------------------------------------------------------------
// The vocabulary index: a prefix tree of code points in depth-first order.

struct vocab_trie {
    int32_t n_vocab = 0;
    std::vector<uint32_t> cp;         // the node's code point
    std::vector<uint32_t> end;        // one past the node's subtree
    std::vector<uint32_t> tok_first;  // tokens ending at node i: toks[tok_first[i] .. tok_first[i] + tok_count[i])
    std::vector<uint16_t> tok_count;
    std::vector<llama_token> toks;
    std::vector<llama_token> special;  // end-of-generation, empty, NUL or partial-UTF-8 tokens: llama.cpp checks these

    void build(const llama_vocab * vocab) {
        n_vocab = llama_vocab_n_tokens(vocab);
        std::vector<uint32_t> flat;
        std::vector<std::pair<uint32_t, uint32_t>> spans(static_cast<size_t>(n_vocab), {0, 0});  // offset, length
        std::vector<llama_token> order;
        order.reserve(static_cast<size_t>(n_vocab));
        std::string piece;
        std::vector<uint32_t> cps;
        for (llama_token id = 0; id < n_vocab; ++id) {
            piece.resize(64);
            int32_t n = llama_token_to_piece(vocab, id, piece.data(), static_cast<int32_t>(piece.size()), 0, true);
            if (n < 0) {
                piece.resize(static_cast<size_t>(-n));
                n = llama_token_to_piece(vocab, id, piece.data(), static_cast<int32_t>(piece.size()), 0, true);
            }
            piece.resize(static_cast<size_t>(std::max(n, 0)));
            if (llama_vocab_is_eog(vocab, id) || !decode_piece(piece, cps)) {
                special.push_back(id);
                continue;
            }
            spans[static_cast<size_t>(id)] = {static_cast<uint32_t>(flat.size()), static_cast<uint32_t>(cps.size())};
            flat.insert(flat.end(), cps.begin(), cps.end());
            order.push_back(id);
        }
        const auto seq = [&](llama_token t) {
            const auto & s = spans[static_cast<size_t>(t)];
            return std::make_pair(flat.data() + s.first, flat.data() + s.first + s.second);
        };
        std::sort(order.begin(), order.end(), [&](llama_token a, llama_token b) {
            const auto sa = seq(a);
            const auto sb = seq(b);
            return std::lexicographical_compare(sa.first, sa.second, sb.first, sb.second) ||
                   (std::equal(sa.first, sa.second, sb.first, sb.second) && a < b);
        });
        std::vector<uint32_t> open;  // node index at each depth
        const uint32_t * prev_begin = nullptr;
        const uint32_t * prev_end = nullptr;
        for (const llama_token t : order) {
            const auto s = seq(t);
            size_t lcp = 0;
            if (prev_begin != nullptr) {
                const size_t limit = std::min<size_t>(s.second - s.first, prev_end - prev_begin);
                while (lcp < limit && s.first[lcp] == prev_begin[lcp]) {
                    ++lcp;
                }
            }
            while (open.size() > lcp) {
                end[open.back()] = static_cast<uint32_t>(cp.size());
                open.pop_back();
            }
            for (const uint32_t * p = s.first + lcp; p < s.second; ++p) {
                open.push_back(static_cast<uint32_t>(cp.size()));
                cp.push_back(*p);
                end.push_back(0);
                tok_first.push_back(0);
                tok_count.push_back(0);
            }
            const uint32_t node = open.back();
            if (tok_count[node] == 0) {
                tok_first[node] = static_cast<uint32_t>(toks.size());
            }
            if (tok_count[node] < UINT16_MAX) {
                tok_count[node]++;
                toks.push_back(t);
            } else {
                special.push_back(t);
            }
            prev_begin = s.first;
            prev_end = s.second;
        }
        while (!open.empty()) {
            end[open.back()] = static_cast<uint32_t>(cp.size());
            open.pop_back();
        }
    }
};

struct lcpp_vocab_index {
    std::shared_ptr<const vocab_trie> trie;
};

namespace {

// ---------------------------------------------------------------------------
// Interned grammar states (sets of llama.cpp stacks) with cached transitions.

constexpr size_t kMaxStacks = 64;             // a state with more stacks is left to llama.cpp
constexpr size_t kMaxCachedAllowed = 8192;    // admitted sets up to this size are kept per state
constexpr size_t kMaxStates = 4096;           // beyond this the cache starts again
constexpr size_t kMaxTransitions = 1 << 20;

struct grammar_state {
    llama_grammar_stacks stacks;                    // sorted, distinct
    std::vector<const llama_grammar_element *> tops;  // terminal tops of the non-empty stacks
    std::vector<uint32_t> top_stack;                // index into stacks for each top
    bool unsupported = false;                       // a token element on top, or too many stacks
    std::unordered_map<uint64_t, int32_t> trans;    // bit set of matching tops -> next state (-1: none)
    bool have_allowed = false;
    std::vector<llama_token> allowed;               // admitted tokens, when few enough to keep
};

struct grammar_cache {
    std::map<llama_grammar_stacks, int32_t> ids;
    std::vector<std::unique_ptr<grammar_state>> states;
    size_t n_transitions = 0;

    void clear() {
        ids.clear();
        states.clear();
        n_transitions = 0;
    }

    int32_t intern(llama_grammar_stacks && stacks) {
        std::sort(stacks.begin(), stacks.end());
        stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
        const auto found = ids.find(stacks);
        if (found != ids.end()) {
            return found->second;
        }
        auto state = std::make_unique<grammar_state>();
        for (size_t i = 0; i < stacks.size(); ++i) {
            if (stacks[i].empty()) {
                continue;
            }
            const llama_grammar_element * top = stacks[i].back();
            if (!is_char_set(top)) {
                state->unsupported = true;
                continue;
            }
            state->tops.push_back(top);
            state->top_stack.push_back(static_cast<uint32_t>(i));
        }
        state->unsupported = state->unsupported || state->tops.size() > kMaxStacks;
        state->stacks = stacks;
        const auto id = static_cast<int32_t>(states.size());
        states.push_back(std::move(state));
        ids.emplace(std::move(stacks), id);
        return id;
    }

    // The state after reading `chr` in state `sid`: -1 when no stack admits it.
    int32_t step(const llama_grammar_rules & rules, int32_t sid, uint32_t chr) {
        grammar_state * state = states[static_cast<size_t>(sid)].get();
        uint64_t matched = 0;
        for (size_t k = 0; k < state->tops.size(); ++k) {
            if (char_set_admits(state->tops[k], chr, nullptr)) {
                matched |= uint64_t{1} << k;
            }
        }
        if (matched == 0) {
            return -1;
        }
        const auto found = state->trans.find(matched);
        if (found != state->trans.end()) {
            return found->second;
        }
        llama_grammar_stacks next;
        for (size_t k = 0; k < state->tops.size(); ++k) {
            if ((matched >> k & 1) == 0) {
                continue;
            }
            const llama_grammar_stack & stack = state->stacks[state->top_stack[k]];
            const llama_grammar_element * after = nullptr;
            char_set_admits(state->tops[k], chr, &after);
            llama_grammar_stack advanced(stack.begin(), stack.end() - 1);
            if (!closes_alternative(after)) {
                advanced.push_back(after);
            }
            expand_to_terminals(rules, advanced, next);
        }
        const int32_t id = next.empty() ? -1 : intern(std::move(next));
        states[static_cast<size_t>(sid)]->trans.emplace(matched, id);
        ++n_transitions;
        return id;
    }
};

struct walker {
    const llama_grammar_rules & rules;
    const vocab_trie & index;
    grammar_cache & cache;
    std::vector<llama_token> & out;
    bool unsupported = false;

    void walk(int32_t sid, uint32_t i, uint32_t stop) {
        while (i < stop && !unsupported) {
            const int32_t next = cache.step(rules, sid, index.cp[i]);
            if (next >= 0) {
                if (cache.states[static_cast<size_t>(next)]->unsupported) {
                    unsupported = true;
                    return;
                }
                const uint32_t first = index.tok_first[i];
                out.insert(out.end(), index.toks.begin() + first, index.toks.begin() + first + index.tok_count[i]);
                if (i + 1 < index.end[i]) {
                    walk(next, i + 1, index.end[i]);
                }
            }
            i = index.end[i];
        }
    }
};

}  // namespace

// ---------------------------------------------------------------------------
// The grammar sampler.

namespace {

struct grammar_sampler {
    const llama_vocab * vocab = nullptr;
    std::shared_ptr<const vocab_trie> index;
    std::string text;
    std::string root;
    bool lazy = false;
    std::vector<std::string> patterns;
    std::vector<llama_token> trigger_tokens;
    int32_t need = 0;
    llama_grammar * grammar = nullptr;
    grammar_cache cache;
    // scratch
    std::vector<llama_token_data> scratch;
    std::vector<llama_token> allowed;
    std::vector<uint8_t> is_allowed;

    ~grammar_sampler() { llama_grammar_free_impl(grammar); }

    llama_grammar * make_grammar() const {
        std::vector<const char *> c_patterns;
        for (const auto & p : patterns) {
            c_patterns.push_back(p.c_str());
        }
        return llama_grammar_init_impl(vocab, text.c_str(), root.c_str(), lazy, c_patterns.data(), c_patterns.size(),
                                       trigger_tokens.data(), trigger_tokens.size());
    }

    // Which of `candidates` (ids only) the grammar admits, by llama.cpp's own check.
    void check_with_llama(const llama_token * ids, size_t n, std::vector<llama_token> & out) {
        scratch.resize(n);
        for (size_t i = 0; i < n; ++i) {
            scratch[i] = llama_token_data{ids[i], 0.0f, 0.0f};
        }
        llama_token_data_array arr{scratch.data(), n, -1, false};
        llama_grammar_apply_impl(*grammar, &arr);
        for (size_t i = 0; i < n; ++i) {
            if (scratch[i].logit == 0.0f) {
                out.push_back(scratch[i].id);
            }
        }
    }

    // Every admitted token (any order) into `out`; false when only llama.cpp's
    // full check can tell (a partial UTF-8 sequence pending, token elements).
    bool admitted_tokens(std::vector<llama_token> & out) {
        out.clear();
        if (!index || grammar->partial_utf8.n_remain != 0) {
            return false;
        }
        if (cache.states.size() > kMaxStates || cache.n_transitions > kMaxTransitions) {
            cache.clear();
        }
        const int32_t sid = cache.intern(llama_grammar_stacks(grammar->stacks));
        grammar_state * state = cache.states[static_cast<size_t>(sid)].get();
        if (state->unsupported) {
            return false;
        }
        if (state->have_allowed) {
            out = state->allowed;
            return true;
        }
        walker w{grammar->rules, *index, cache, out};
        const uint32_t n_nodes = static_cast<uint32_t>(index->cp.size());
        w.walk(sid, 0, n_nodes);
        if (w.unsupported) {
            out.clear();
            return false;
        }
        check_with_llama(index->special.data(), index->special.size(), out);
        state = cache.states[static_cast<size_t>(sid)].get();  // the walk may have added states
        if (out.size() <= kMaxCachedAllowed) {
            state->have_allowed = true;
            state->allowed = out;
        }
        return true;
    }

    // Apply the grammar to an arbitrary candidate array (rejected: -inf).
    void apply(llama_token_data_array * cur_p) {
        if (grammar == nullptr || grammar->awaiting_trigger) {
            return;
        }
        if (cur_p->size > 1024 && admitted_tokens(allowed)) {
            is_allowed.assign(static_cast<size_t>(index->n_vocab), 0);
            for (const llama_token t : allowed) {
                is_allowed[static_cast<size_t>(t)] = 1;
            }
            for (size_t i = 0; i < cur_p->size; ++i) {
                const llama_token id = cur_p->data[i].id;
                if (id < 0 || id >= index->n_vocab || !is_allowed[static_cast<size_t>(id)]) {
                    cur_p->data[i].logit = -INFINITY;
                }
            }
            return;
        }
        llama_grammar_apply_impl(*grammar, cur_p);
    }
};

const char * grammar_name(const struct llama_sampler *) { return "lcpp-grammar"; }

void grammar_accept(struct llama_sampler * smpl, llama_token token) {
    auto * g = static_cast<grammar_sampler *>(smpl->ctx);
    if (g->grammar != nullptr) {
        llama_grammar_accept_impl(*g->grammar, token);
    }
}

void grammar_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p) {
    static_cast<grammar_sampler *>(smpl->ctx)->apply(cur_p);
}

void grammar_reset(struct llama_sampler * smpl) {
    auto * g = static_cast<grammar_sampler *>(smpl->ctx);
    if (g->grammar == nullptr) {
        return;
    }
    llama_grammar * fresh = nullptr;
    try {
        fresh = g->make_grammar();
    } catch (...) {
        fresh = nullptr;
    }
    if (fresh == nullptr) {  // it parsed once, so only memory can fail: keep the old state (never throw into C)
        return;
    }
    g->cache.clear();  // its states point into the old grammar's rules
    llama_grammar_free_impl(g->grammar);
    g->grammar = fresh;
}

struct llama_sampler * grammar_clone(const struct llama_sampler * smpl);

void grammar_free(struct llama_sampler * smpl) { delete static_cast<grammar_sampler *>(smpl->ctx); }

llama_sampler_i make_grammar_iface() {
    llama_sampler_i iface{};
    iface.name = grammar_name;
    iface.accept = grammar_accept;
    iface.apply = grammar_apply;
    iface.reset = grammar_reset;
    iface.clone = grammar_clone;
    iface.free = grammar_free;
    return iface;
}

llama_sampler_i grammar_iface = make_grammar_iface();

struct llama_sampler * grammar_clone(const struct llama_sampler * smpl) {
    const auto * g = static_cast<const grammar_sampler *>(smpl->ctx);
    auto copy = std::make_unique<grammar_sampler>();
    copy->vocab = g->vocab;
    copy->index = g->index;
    copy->text = g->text;
    copy->root = g->root;
    copy->lazy = g->lazy;
    copy->patterns = g->patterns;
    copy->trigger_tokens = g->trigger_tokens;
    copy->need = g->need;
    copy->grammar = g->grammar != nullptr ? llama_grammar_clone_impl(*g->grammar) : nullptr;
    return llama_sampler_init(&grammar_iface, copy.release());
}

grammar_sampler * as_grammar(struct llama_sampler * smpl) {
    return smpl != nullptr && smpl->iface == &grammar_iface ? static_cast<grammar_sampler *>(smpl->ctx) : nullptr;
}

// ---------------------------------------------------------------------------
// GBNF validation with the reason and the line, from llama.cpp's own parser (which
// would print the reason to stderr).

const char * skip_space(const char * pos) {  // llama.cpp's parse_space(src, newline_ok = true)
    while (*pos == ' ' || *pos == '\t' || *pos == '#' || *pos == '\r' || *pos == '\n') {
        if (*pos == '#') {
            while (*pos && *pos != '\r' && *pos != '\n') {
                pos++;
            }
        } else {
            pos++;
        }
    }
    return pos;
}

std::string where(const char * src, const char * at) {
    size_t line = 1;
    const char * line_start = src;
    for (const char * p = src; p < at && *p; ++p) {
        if (*p == '\n') {
            ++line;
            line_start = p + 1;
        }
    }
    const char * line_end = line_start;
    while (*line_end && *line_end != '\n' && *line_end != '\r') {
        ++line_end;
    }
    std::string text(line_start, line_end);
    if (text.size() > 120) {
        text = text.substr(0, 117) + "...";
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(at - line_start + 1) + ": " + text;
}

// "" when llama.cpp's parser accepts `src` with a rule named `root`, else the reason.
std::string grammar_problem(const llama_vocab * vocab, const char * src, const char * root) {
    llama_grammar_parser parser(vocab);
    const char * rule_start = src;
    try {
        const char * pos = skip_space(src);
        while (*pos) {
            rule_start = pos;
            pos = parser.parse_rule(pos);
        }
        for (const auto & rule : parser.rules) {
            if (rule.empty()) {
                for (const auto & kv : parser.symbol_ids) {
                    if (kv.second < parser.rules.size() && parser.rules[kv.second].empty()) {
                        return "Undefined rule identifier '" + kv.first + "'";
                    }
                }
                return "Undefined rule";
            }
            for (const auto & elem : rule) {
                if (elem.type == LLAMA_GRETYPE_RULE_REF &&
                    (elem.value >= parser.rules.size() || parser.rules[elem.value].empty())) {
                    for (const auto & kv : parser.symbol_ids) {
                        if (kv.second == elem.value) {
                            return "Undefined rule identifier '" + kv.first + "'";
                        }
                    }
                    return "Undefined rule";
                }
            }
        }
    } catch (const std::exception & e) {
        std::string reason = e.what();
        // llama.cpp's messages end with " at <the rest of the grammar>": point at it instead
        const size_t at = reason.find(" at ");
        const char * failed = rule_start;
        if (at != std::string::npos) {
            const std::string rest = reason.substr(at + 4);
            const size_t src_len = std::strlen(src);
            if (rest.size() <= src_len && std::strcmp(src + src_len - rest.size(), rest.c_str()) == 0) {
                reason = reason.substr(0, at);
                if (rest.empty()) {  // ran off the end: point at the rule that is unfinished
                    reason += " at the end of the grammar";
                } else {
                    failed = src + src_len - rest.size();
                }
            }
        }
        return reason + " (" + where(src, failed) + ")";
    }
    if (parser.rules.empty()) {
        return "the grammar defines no rules";
    }
    if (parser.symbol_ids.find(root) == parser.symbol_ids.end()) {
        return std::string("the grammar has no rule named '") + root + "' to start from";
    }
    return "";
}

}  // namespace

// ---------------------------------------------------------------------------
// Sampling.

namespace {

bool is_pre_stage(const struct llama_sampler * stage) {
    const char * name = llama_sampler_name(stage);
    return std::strcmp(name, "logit-bias") == 0 || std::strcmp(name, "lcpp-penalties") == 0 ||
           std::strcmp(name, "penalties") == 0;
}

struct sample_scratch {
    std::vector<llama_token_data> all;
    std::vector<llama_token_data> base;
    std::vector<llama_token_data> pick;
    std::vector<llama_token> ids;
    std::vector<llama_token> admitted;
};

// The `count` highest-logit candidates of base (any order) into ids.
void top_candidates(const std::vector<llama_token_data> & base, size_t count, std::vector<llama_token> & ids) {
    using entry = std::pair<float, llama_token>;
    std::priority_queue<entry, std::vector<entry>, std::greater<entry>> heap;
    for (const auto & c : base) {
        if (heap.size() < count) {
            heap.emplace(c.logit, c.id);
        } else if (c.logit > heap.top().first) {
            heap.pop();
            heap.emplace(c.logit, c.id);
        }
    }
    ids.clear();
    while (!heap.empty()) {
        ids.push_back(heap.top().second);
        heap.pop();
    }
}

}  // namespace

llama_token lcpp_grammar_sample(struct llama_sampler * chain, struct llama_sampler * grammar_smpl,
                                struct llama_context * ctx, int32_t idx, int32_t top) {
    grammar_sampler * g = as_grammar(grammar_smpl);
    if (g == nullptr) {
        throw std::logic_error("not an lcpp grammar sampler");
    }
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        throw std::runtime_error("no logits at this output index");
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    thread_local sample_scratch s;
    llama_token_data_array all = lcpp_candidates(logits, n_vocab, top, s.all);  // the chain's unconstrained try
    llama_sampler_apply(chain, &all);
    if (all.selected < 0 || all.size == 0) {
        throw std::runtime_error("the sampler chain selected no token");
    }
    llama_token token = all.data[all.selected].id;
    lcpp_note_choice(all, chain);

    if (g->grammar != nullptr && !g->grammar->awaiting_trigger) {
        llama_token_data single{token, 0.0f, 0.0f};
        llama_token_data_array one{&single, 1, -1, false};
        llama_grammar_apply_impl(*g->grammar, &one);
        if (single.logit != 0.0f) {  // rejected: choose among the admitted tokens
            // the logit-changing stages (bias, penalties) on the whole vocabulary, in id order
            const bool is_chain = std::strcmp(llama_sampler_name(chain), "chain") == 0;
            const int32_t n_stages = is_chain ? llama_sampler_chain_n(chain) : 0;
            int32_t first_post = 0;
            s.base.resize(static_cast<size_t>(n_vocab));
            for (int32_t i = 0; i < n_vocab; ++i) {
                s.base[static_cast<size_t>(i)] = llama_token_data{i, logits[i], 0.0f};
            }
            llama_token_data_array base{s.base.data(), s.base.size(), -1, false};
            for (; first_post < n_stages && is_pre_stage(llama_sampler_chain_get(chain, first_post)); ++first_post) {
                llama_sampler_apply(llama_sampler_chain_get(chain, first_post), &base);
            }
            // the admitted candidates the rest of the chain needs
            bool settled = false;
            s.admitted.clear();
            const size_t need = static_cast<size_t>(std::max(g->need, 0));
            if (need > 0 && is_chain && base.size == static_cast<size_t>(n_vocab) && !base.sorted) {
                const size_t probe = std::min<size_t>(std::max<size_t>(64, 4 * need), static_cast<size_t>(n_vocab));
                top_candidates(s.base, probe, s.ids);
                g->check_with_llama(s.ids.data(), s.ids.size(), s.admitted);
                settled = s.admitted.size() >= need;
            }
            if (!settled && !(is_chain && g->admitted_tokens(s.admitted))) {
                // only llama.cpp's full check can tell
                s.ids.resize(static_cast<size_t>(n_vocab));
                for (int32_t i = 0; i < n_vocab; ++i) {
                    s.ids[static_cast<size_t>(i)] = i;
                }
                s.admitted.clear();
                g->check_with_llama(s.ids.data(), s.ids.size(), s.admitted);
            }
            if (is_chain) {
                s.pick.clear();
                for (const llama_token t : s.admitted) {
                    s.pick.push_back(s.base[static_cast<size_t>(t)]);
                }
                std::sort(s.pick.begin(), s.pick.end(),
                          [](const llama_token_data & a, const llama_token_data & b) {
                              return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
                          });
                llama_token_data_array pick{s.pick.data(), s.pick.size(), -1, false};
                for (int32_t i = first_post; i < n_stages; ++i) {
                    llama_sampler_apply(llama_sampler_chain_get(chain, i), &pick);
                }
                if (pick.size == 0 || pick.selected < 0) {
                    throw std::runtime_error("the grammar admits no token here");
                }
                token = pick.data[pick.selected].id;
                lcpp_note_choice(pick, chain);
            } else {
                // not a chain: run it on the whole vocabulary with the rejected tokens masked
                s.all.resize(static_cast<size_t>(n_vocab));
                for (int32_t i = 0; i < n_vocab; ++i) {
                    s.all[static_cast<size_t>(i)] = llama_token_data{i, -INFINITY, 0.0f};
                }
                for (const llama_token t : s.admitted) {
                    s.all[static_cast<size_t>(t)].logit = logits[t];
                }
                llama_token_data_array masked{s.all.data(), s.all.size(), -1, false};
                llama_sampler_apply(chain, &masked);
                token = masked.data[masked.selected].id;
                lcpp_note_choice(masked, chain);
            }
        }
    }
    if (g->grammar != nullptr) {
        llama_grammar_accept_impl(*g->grammar, token);
    }
    llama_sampler_accept(chain, token);
    return token;
}

bool lcpp_is_grammar_sampler(const struct llama_sampler * smpl) {
    return smpl != nullptr && smpl->iface == &grammar_iface;
}

// ---------------------------------------------------------------------------
// JSON schema conversion.  llama.cpp's converter gives up on a pattern it cannot
// express: it accepts any string there and prints a warning to stderr.  So each
// pattern is first tried alone, in a conversion stopped before anything is
// printed; the patterns it gives up on are reported, and the schema converted
// without them (with no pattern, and no length or format either, since a pattern
// overrides those: any string, as the converter's own fallback).

namespace {

struct probe_done {};

// Whether llama.cpp's converter gives up on `pattern`.  Its fallback makes the
// pattern's rule exactly `string`, and `add_rule` hands back the same name only
// for a rule whose text is already the same.
bool converter_gives_up_on(const std::string & pattern) {
    bool gives_up = false;
    try {
        build_grammar([&](const common_grammar_builder & builder) {
            common_chat_schema_string probe;
            probe.pattern = pattern;
            const std::string name = builder.add_schema("pattern", probe);
            gives_up = !name.empty() && builder.add_rule(name, "string") == name;
            throw probe_done{};  // before the converter prints its warnings
        });
    } catch (const probe_done &) {
    }
    return gives_up;
}

void drop_unsupported_patterns(common_chat_schema * node, std::vector<std::string> & dropped) {
    if (node == nullptr) {
        return;
    }
    switch (node->kind()) {
        case common_chat_schema::KIND_STRING: {
            auto * str = static_cast<common_chat_schema_string *>(node);
            if (!str->pattern.empty() && converter_gives_up_on(str->pattern)) {
                dropped.push_back(str->pattern);
                str->pattern.clear();
                str->format = common_chat_schema::FORMAT_NONE;
                str->min_length = 0;
                str->max_length = -1;
            }
            break;
        }
        case common_chat_schema::KIND_ANY_OF:
            for (auto & child : static_cast<common_chat_schema_any_of *>(node)->children) {
                drop_unsupported_patterns(child.get(), dropped);
            }
            break;
        case common_chat_schema::KIND_ALL_OF:
            for (auto & child : static_cast<common_chat_schema_all_of *>(node)->children) {
                drop_unsupported_patterns(child.get(), dropped);
            }
            break;
        case common_chat_schema::KIND_ARRAY:
            drop_unsupported_patterns(static_cast<common_chat_schema_array *>(node)->items.get(), dropped);
            break;
        case common_chat_schema::KIND_TUPLE:
            for (auto & item : static_cast<common_chat_schema_tuple *>(node)->items) {
                drop_unsupported_patterns(item.get(), dropped);
            }
            break;
        case common_chat_schema::KIND_OBJECT: {
            auto * object = static_cast<common_chat_schema_object *>(node);
            for (auto & property : object->properties) {
                drop_unsupported_patterns(property.schema.get(), dropped);
            }
            drop_unsupported_patterns(object->additional_properties.get(), dropped);
            break;
        }
        default:  // references are visited through the document's refs
            break;
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// C API.

extern "C" {

lcpp_vocab_index * lcpp_vocab_index_new(const struct llama_vocab * vocab) {
    try {
        auto trie = std::make_shared<vocab_trie>();
        trie->build(vocab);
        return new lcpp_vocab_index{std::move(trie)};
    } catch (...) {
        return nullptr;
    }
}

void lcpp_vocab_index_free(lcpp_vocab_index * index) { delete index; }

int32_t lcpp_vocab_index_nodes(const lcpp_vocab_index * index) {
    return index == nullptr ? 0 : static_cast<int32_t>(index->trie->cp.size());
}

struct llama_sampler * lcpp_grammar_init(const struct llama_vocab * vocab, lcpp_vocab_index * index,
                                         const char * grammar, const char * root, bool lazy,
                                         const char ** trigger_patterns, size_t n_trigger_patterns,
                                         const llama_token * trigger_tokens, size_t n_trigger_tokens, int32_t need,
                                         char ** error) {
    *error = nullptr;
    try {
        const std::string problem = grammar_problem(vocab, grammar, root);
        if (!problem.empty()) {
            *error = dup_string(problem);
            return nullptr;
        }
        auto g = std::make_unique<grammar_sampler>();
        g->vocab = vocab;
        if (index != nullptr && index->trie->n_vocab == llama_vocab_n_tokens(vocab)) {
            g->index = index->trie;  // shared: the sampler may outlive the caller's handle
        }
        g->text = grammar;
        g->root = root;
        g->lazy = lazy;
        for (size_t i = 0; i < n_trigger_patterns; ++i) {
            g->patterns.emplace_back(trigger_patterns[i]);
        }
        g->trigger_tokens.assign(trigger_tokens, trigger_tokens + n_trigger_tokens);
        g->need = need;
        g->grammar = g->make_grammar();
        if (g->grammar == nullptr) {
            *error = dup_string("llama.cpp rejected the grammar");
            return nullptr;
        }
        return llama_sampler_init(&grammar_iface, g.release());
    } catch (const std::exception & e) {
        *error = dup_string(e.what());
    } catch (...) {
        *error = dup_string("unknown C++ exception while creating the grammar");
    }
    return nullptr;
}

int lcpp_grammar_check(const struct llama_vocab * vocab, const char * grammar, const char * root, char ** error) {
    *error = nullptr;
    try {
        const std::string problem = grammar_problem(vocab, grammar, root);
        if (problem.empty()) {
            return 0;
        }
        *error = dup_string(problem);
    } catch (const std::exception & e) {
        *error = dup_string(e.what());
    } catch (...) {
        *error = dup_string("unknown C++ exception while checking the grammar");
    }
    return 1;
}

int lcpp_json_schema_to_grammar_ex(const char * schema_json, char ** out, char ** warnings) {
    *out = nullptr;
    *warnings = nullptr;
    std::string failure;
    try {
        std::vector<std::string> dropped;
        std::string result;
        try {
            common_chat_schema_document document = common_chat_schema_from_json(common_json::parse(schema_json));
            drop_unsupported_patterns(document.root.get(), dropped);
            for (auto & ref : document.refs) {
                drop_unsupported_patterns(ref.second.get(), dropped);
            }
            result = json_schema_to_grammar(document);
        } catch (const std::runtime_error & e) {  // worded as llama.cpp's json_schema_to_grammar words it
            throw std::invalid_argument(std::string("JSON schema conversion failed:\n") + e.what());
        }
        std::string notes;
        for (const std::string & pattern : dropped) {
            notes += (notes.empty() ? "" : "\n") + ("pattern " + pattern) +
                     " is not supported by llama.cpp's converter, accepting any string";
        }
        if (!notes.empty()) {
            *warnings = dup_string(notes);
        }
        *out = dup_string(result);
        return 0;
    } catch (const std::exception & e) {
        failure = e.what();
        if (failure.empty()) {
            failure = "unknown error";
        }
    } catch (...) {
        failure = "unknown C++ exception";
    }
    *out = dup_string(failure);
    return 1;
}

int32_t lcpp_grammar_admitted(struct llama_sampler * smpl, bool reference, llama_token * out, int32_t cap) {
    grammar_sampler * g = as_grammar(smpl);
    if (g == nullptr || g->grammar == nullptr) {
        return -1;
    }
    try {
        std::vector<llama_token> admitted;
        if (reference || !g->admitted_tokens(admitted)) {
            admitted.clear();
            std::vector<llama_token> ids(static_cast<size_t>(llama_vocab_n_tokens(g->vocab)));
            for (size_t i = 0; i < ids.size(); ++i) {
                ids[i] = static_cast<llama_token>(i);
            }
            g->check_with_llama(ids.data(), ids.size(), admitted);
        }
        std::sort(admitted.begin(), admitted.end());
        const auto n = static_cast<int32_t>(admitted.size());
        std::copy(admitted.begin(), admitted.begin() + std::min(n, std::max(cap, 0)), out);
        return n;
    } catch (...) {
        return -1;
    }
}

}  // extern "C"
