// Incremental chat output: llama.cpp's chat parser in partial mode, kept in C++ per request.
//
// Each feed appends generated text and hands back llama.cpp's message diffs as
// plain structs: content, reasoning and tool-call deltas.  The parser's state
// (its loaded grammar of the output, the text so far, the last message) never
// crosses into Python, and text that cannot change how the reply parses (plain
// words appended to content or reasoning that already runs to the end of the
// text) is passed through without parsing at all.
#include "lcpp_shim.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat.h"
#include "common.h"
#include "json.h"
#include "reasoning-budget.h"

struct lcpp_chat_stream {
    common_chat_parser_params params;
    std::string text;
    common_chat_msg msg;
    std::vector<std::string> ids;  // tool call ids, by index
    std::set<size_t> named;        // tool calls whose id and name have been sent
    std::vector<common_chat_msg_diff> diffs;
    std::vector<lcpp_chat_delta> deltas;
    std::string sent;   // the content sent so far
    int32_t tail = -1;  // the delta kind that runs to the end of the text, or -1
    std::mt19937_64 random{std::random_device{}()};
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

std::string new_call_id(std::mt19937_64 & random) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    std::string id = "call_";
    for (int i = 0; i < 24; ++i) {
        id += alphabet[random() % (sizeof(alphabet) - 1)];
    }
    return id;
}

bool ends_with(const std::string & text, const std::string & tail) {
    return !tail.empty() && text.size() >= tail.size() &&
           text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

// Bytes that no chat format's marker is made of alone: letters, digits, spaces and
// sentence punctuation.  Markers all contain something else (<, [, {, |, :, newline, ...).
bool plain(const char * text, size_t len) {
    for (size_t i = 0; i < len; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' ||
                        c == ',' || c == '.' || c == '\'' || c == '?' || c == '!' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

// Whether every tool call's arguments are a whole JSON object (llama.cpp's lenient parser
// also takes arguments cut short, such as an unterminated string).
bool calls_are_whole(const common_chat_msg & msg) {
    for (const auto & call : msg.tool_calls) {
        try {
            if (!common_json::parse(call.arguments).is_object()) {
                return false;
            }
        } catch (const std::exception &) {
            return false;
        }
    }
    return true;
}

// Which part of the message, if any, runs to the end of the text (then plain text extends it).
int32_t tail_of(const lcpp_chat_stream & s) {
    if (!s.msg.tool_calls.empty()) {
        return -1;
    }
    if (!s.msg.content.empty()) {
        return ends_with(s.text, s.msg.content) ? LCPP_DELTA_CONTENT : -1;
    }
    return ends_with(s.text, s.msg.reasoning_content) ? LCPP_DELTA_REASONING : -1;
}

// llama-server's rule for tool calls: a call's id and name go out once, with its first
// arguments (or at the end), so a name still growing is never sent half-way.
void keep_diff(lcpp_chat_stream & s, common_chat_msg_diff & d, bool partial) {
    if (d.tool_call_index == std::string::npos) {
        s.diffs.push_back(std::move(d));
        return;
    }
    const size_t i = d.tool_call_index;
    if (s.named.count(i)) {
        if (!d.tool_call_delta.arguments.empty()) {
            d.tool_call_delta.name.clear();
            d.tool_call_delta.id.clear();
            s.diffs.push_back(std::move(d));
        }
    } else if (!d.tool_call_delta.arguments.empty() || !partial) {
        d.tool_call_delta.name = s.msg.tool_calls[i].name;
        d.tool_call_delta.id = s.msg.tool_calls[i].id;
        s.diffs.push_back(std::move(d));
        s.named.insert(i);
    }
}

void update(lcpp_chat_stream & s, common_chat_msg next, bool final) {
    next.set_tool_call_ids(s.ids, [&] { return new_call_id(s.random); });
    auto diffs = common_chat_msg_diff::compute_diffs(s.msg, next);  // throws if the parse went back
    s.msg = std::move(next);
    for (auto & d : diffs) {
        keep_diff(s, d, !final);
    }
    if (final) {
        for (size_t i = 0; i < s.msg.tool_calls.size(); ++i) {
            if (!s.named.count(i) && !s.msg.tool_calls[i].name.empty()) {
                common_chat_msg_diff header;
                header.tool_call_index = i;
                header.tool_call_delta.id = s.msg.tool_calls[i].id;
                header.tool_call_delta.name = s.msg.tool_calls[i].name;
                s.diffs.push_back(std::move(header));
                s.named.insert(i);
            }
        }
    }
}

// The reply as text, when at its end it does not parse as the format says (a malformed
// tool call): the content is everything after the reasoning, and there are no calls.
void fall_back_to_text(lcpp_chat_stream & s) {
    std::string content = s.text;
    if (!s.msg.reasoning_content.empty()) {
        const size_t at = s.text.find(s.msg.reasoning_content);
        if (at != std::string::npos) {
            content = s.text.substr(at + s.msg.reasoning_content.size());
        }
    }
    common_chat_msg_diff d;
    d.content_delta = content.rfind(s.msg.content, 0) == 0 ? content.substr(s.msg.content.size()) : content;
    s.msg.content = std::move(content);
    s.msg.tool_calls.clear();
    if (!d.content_delta.empty()) {
        s.diffs.push_back(std::move(d));
    }
}

// The content delta is what the content adds to what was sent.  Mid-reply, trailing
// whitespace waits for what follows it: the parser trims it from a finished reply, and
// a delta once sent cannot be taken back.
void settle_content(lcpp_chat_stream & s, bool final) {
    const auto is_content = [](const common_chat_msg_diff & d) {
        return d.tool_call_index == std::string::npos && d.reasoning_content_delta.empty();
    };
    const auto first = std::find_if(s.diffs.begin(), s.diffs.end(), is_content);
    const size_t at = static_cast<size_t>(first - s.diffs.begin());
    s.diffs.erase(std::remove_if(s.diffs.begin(), s.diffs.end(), is_content), s.diffs.end());
    const std::string & content = s.msg.content;
    if (content.size() <= s.sent.size() || content.compare(0, s.sent.size(), s.sent) != 0) {
        return;
    }
    size_t end = content.size();
    while (!final && end > s.sent.size() && std::isspace(static_cast<unsigned char>(content[end - 1]))) {
        --end;
    }
    if (end == s.sent.size()) {
        return;
    }
    common_chat_msg_diff d;
    d.content_delta = content.substr(s.sent.size(), end - s.sent.size());
    s.sent += d.content_delta;
    s.diffs.insert(s.diffs.begin() + static_cast<std::ptrdiff_t>(std::min(at, s.diffs.size())), std::move(d));
}

void export_deltas(lcpp_chat_stream & s) {
    s.deltas.clear();
    for (const auto & d : s.diffs) {
        lcpp_chat_delta out{};
        if (d.tool_call_index != std::string::npos) {
            out.kind = LCPP_DELTA_TOOL_CALL;
            out.index = static_cast<int32_t>(d.tool_call_index);
            out.text = d.tool_call_delta.arguments.c_str();
            out.name = d.tool_call_delta.name.c_str();
            out.id = d.tool_call_delta.id.c_str();
        } else {
            const bool reasoning = !d.reasoning_content_delta.empty();
            out.kind = reasoning ? LCPP_DELTA_REASONING : LCPP_DELTA_CONTENT;
            out.index = -1;
            out.text = reasoning ? d.reasoning_content_delta.c_str() : d.content_delta.c_str();
            out.name = "";
            out.id = "";
        }
        s.deltas.push_back(out);
    }
}

}  // namespace

extern "C" {

lcpp_chat_stream * lcpp_chat_stream_new(const char * params_json, char ** error) {
    *error = nullptr;
    try {
        const common_json request = common_json::parse(params_json);
        auto * s = new lcpp_chat_stream();
        s->params.format = static_cast<common_chat_format>(request.value("format", 0));
        s->params.generation_prompt = request.value("generation_prompt", std::string());
        const std::string parser = request.value("parser", std::string());
        if (!parser.empty()) {
            s->params.parser.load(parser);
        }
        s->msg.role = "assistant";
        return s;
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while loading the chat parser");
    }
    return nullptr;
}

void lcpp_chat_stream_free(lcpp_chat_stream * stream) { delete stream; }

int32_t lcpp_chat_stream_feed(lcpp_chat_stream * s, const char * text, int32_t len, int32_t mode,
                              const lcpp_chat_delta ** deltas, char ** error) {
    *error = nullptr;
    *deltas = nullptr;
    try {
        s->diffs.clear();
        s->text.append(text, static_cast<size_t>(len));
        if (mode == LCPP_FEED_MORE && len > 0 && s->tail >= 0 && plain(text, static_cast<size_t>(len))) {
            common_chat_msg_diff d;
            std::string & part = s->tail == LCPP_DELTA_CONTENT ? s->msg.content : s->msg.reasoning_content;
            part.append(text, static_cast<size_t>(len));
            (s->tail == LCPP_DELTA_CONTENT ? d.content_delta : d.reasoning_content_delta).assign(text, len);
            s->diffs.push_back(std::move(d));
        } else if (mode != LCPP_FEED_MORE || len > 0) {
            common_chat_msg next;
            bool parsed = true;
            try {
                next = common_chat_parse(s->text, mode != LCPP_FEED_END, s->params);
            } catch (const std::exception &) {
                parsed = false;  // mid-reply: wait for more; at the end: the reply is text
            }
            if (parsed && mode == LCPP_FEED_END && !calls_are_whole(next)) {
                parsed = false;  // a malformed call: the reply is text
            }
            if (parsed) {
                try {
                    update(*s, std::move(next), mode != LCPP_FEED_MORE);
                } catch (const std::exception &) {
                    parsed = false;  // the parse went back on something already sent
                }
            }
            const bool nothing = s->msg.tool_calls.empty() && s->msg.content.empty() &&
                                 s->msg.reasoning_content.empty();
            if (mode == LCPP_FEED_END ? !parsed : mode == LCPP_FEED_CUT && nothing) {
                fall_back_to_text(*s);  // text held back as a possible call start is text after all
            }
            s->tail = tail_of(*s);
        }
        settle_content(*s, mode != LCPP_FEED_MORE);
        export_deltas(*s);
        *deltas = s->deltas.data();
        return static_cast<int32_t>(s->deltas.size());
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while parsing the reply");
    }
    return -1;
}

int32_t lcpp_chat_stream_tool_calls(const lcpp_chat_stream * s) {
    return static_cast<int32_t>(s->msg.tool_calls.size());
}

struct llama_sampler * lcpp_reasoning_budget_init(const struct llama_vocab * vocab, const char * start_tag,
                                                  const char * end_tag, int32_t budget, bool thinking_open,
                                                  char ** error) {
    *error = nullptr;
    try {
        const llama_tokens start = common_tokenize(vocab, start_tag, false, true);
        const llama_tokens end = common_tokenize(vocab, end_tag, false, true);
        if (start.empty() || end.empty()) {
            throw std::runtime_error("the template's thinking tags are empty");
        }
        return common_reasoning_budget_init(vocab, {start}, {end}, end, budget,
                                            thinking_open ? REASONING_BUDGET_COUNTING : REASONING_BUDGET_IDLE);
    } catch (const std::exception & e) {
        *error = copy_string(e.what());
    } catch (...) {
        *error = copy_string("unknown C++ exception while making the reasoning budget");
    }
    return nullptr;
}

}  // extern "C"
