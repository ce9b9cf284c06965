// llama.cpp's log, kept per thread so that a failing call's reason is its own.
//
// llama.cpp, ggml and libmtmd log on the thread that makes a call.  The callback
// here assembles each thread's fragments into lines (a CONT fragment continues the
// thread's current line at its level), keeps them while that thread has a capture
// open, and passes every complete line on to one sink (Python's logging).  Nothing
// here touches a file descriptor, and no thread ever sees another's lines.
#include "lcpp_shim.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

struct log_line {
    enum ggml_log_level level;
    std::string text;
};

struct thread_log {
    enum ggml_log_level level = GGML_LOG_LEVEL_INFO;  // of the line being assembled
    std::string partial;                              // that line, until its newline
    int depth = 0;                                    // open captures
    std::vector<log_line> lines;                      // kept while depth > 0
    size_t kept_bytes = 0;
};

// A capture keeps this much text; past it only errors are kept (a verbose load
// must not grow without bound).
constexpr size_t kMaxKeptBytes = size_t{8} << 20;

thread_local thread_log t_log;
std::atomic<lcpp_log_sink> g_sink{nullptr};
// Lines below this level never reach the sink: llama.cpp logs dozens of debug lines
// per decode, and each would take the interpreter's lock only to be dropped there.
std::atomic<int> g_sink_level{GGML_LOG_LEVEL_INFO};

void finish_line(thread_log & t, enum ggml_log_level level, std::string text) {
    if (!text.empty() && text.back() == '\r') {
        text.pop_back();
    }
    if (text.empty()) {
        return;
    }
    if (level >= g_sink_level.load(std::memory_order_relaxed)) {
        if (const lcpp_log_sink sink = g_sink.load(std::memory_order_acquire)) {
            sink(level, text.c_str());
        }
    }
    if (t.depth > 0 && (t.kept_bytes + text.size() <= kMaxKeptBytes || level >= GGML_LOG_LEVEL_ERROR)) {
        t.kept_bytes += text.size();
        t.lines.push_back({level, std::move(text)});
    }
}

// Ends the line being assembled, if any (a new message starts, or a capture begins or is read).
void flush_partial(thread_log & t) {
    if (!t.partial.empty()) {
        std::string text;
        text.swap(t.partial);
        finish_line(t, t.level, std::move(text));
    }
}

}  // namespace

extern "C" {

void lcpp_log_route(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    if (text == nullptr) {
        return;
    }
    try {
        thread_log & t = t_log;
        if (level != GGML_LOG_LEVEL_CONT) {
            flush_partial(t);
            t.level = level;
        }
        t.partial += text;
        // take the complete lines out first: the sink may log again on this thread
        std::vector<std::string> complete;
        size_t start = 0;
        for (size_t nl = t.partial.find('\n'); nl != std::string::npos; nl = t.partial.find('\n', start)) {
            complete.emplace_back(t.partial, start, nl - start);
            start = nl + 1;
        }
        t.partial.erase(0, start);
        const enum ggml_log_level line_level = t.level;
        for (std::string & line : complete) {
            finish_line(t, line_level, std::move(line));
        }
    } catch (...) {
        // out of memory: the line is lost, never the caller
    }
}

void lcpp_log_set_sink(lcpp_log_sink sink) { g_sink.store(sink, std::memory_order_release); }

void lcpp_log_set_sink_level(enum ggml_log_level min_level) {
    g_sink_level.store(min_level, std::memory_order_relaxed);
}

size_t lcpp_log_begin(void) {
    thread_log & t = t_log;
    try {
        flush_partial(t);  // an earlier message is not this capture's
    } catch (...) {
    }
    t.depth++;
    return t.lines.size();
}

char * lcpp_log_read(size_t mark, enum ggml_log_level min_level) {
    thread_log & t = t_log;
    try {
        flush_partial(t);
        std::string text;
        for (size_t i = mark; i < t.lines.size(); ++i) {
            if (t.lines[i].level >= min_level) {
                if (!text.empty()) {
                    text += '\n';
                }
                text += t.lines[i].text;
            }
        }
        if (text.empty()) {
            return nullptr;
        }
        char * out = static_cast<char *>(std::malloc(text.size() + 1));
        if (out != nullptr) {
            std::memcpy(out, text.c_str(), text.size() + 1);
        }
        return out;
    } catch (...) {
        return nullptr;
    }
}

void lcpp_log_end(void) {
    thread_log & t = t_log;
    if (t.depth > 0 && --t.depth == 0) {
        std::vector<log_line>().swap(t.lines);
        t.kept_bytes = 0;
    }
}

}  // extern "C"
