/* C interface of our thin shim over llama.cpp's C++ helpers and hot loops.
 *
 * Every function here is callable from C, never throws, and reports failure
 * through its return value.  Strings handed out through `char **out` are
 * allocated by the shim and must be released with lcpp_string_free().
 */
#ifndef LCPP_SHIM_H
#define LCPP_SHIM_H

#include <stdbool.h>
#include <stdint.h>

#include "llama.h"
#include "lcpp_grammar.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lcpp_chat_templates lcpp_chat_templates;

/* The Python package version this extension was built for. */
const char * lcpp_package_version(void);

/* Release a string returned by the shim (NULL is accepted). */
void lcpp_string_free(char * s);

/* Load the model's chat templates, or `template_override` when non-empty.
 * 0 on success with *out set; else *err holds the reason. */
int lcpp_chat_templates_init(const struct llama_model * model, const char * template_override,
                             lcpp_chat_templates ** out, char ** err);
void lcpp_chat_templates_free(lcpp_chat_templates * tmpls);

/* Render a chat request (JSON: messages, tools, tool_choice, parallel_tool_calls,
 * add_generation_prompt, json_schema, grammar) into JSON: prompt, grammar,
 * grammar_lazy, grammar_triggers, preserved_tokens, additional_stops, format,
 * generation_prompt, parser.  0 on success; else *out holds the reason. */
int lcpp_chat_apply(const lcpp_chat_templates * tmpls, const char * request_json, char ** out);

/* Parse generated text back into an OpenAI-style assistant message (JSON).
 * `params_json` carries format, generation_prompt, parser and parse_tool_calls
 * as returned by lcpp_chat_apply.  0 on success; else *out holds the reason. */
int lcpp_chat_parse(const char * params_json, const char * text, bool is_partial, char ** out);

/* llama_tokenize, guarded: any byte sequence goes in, and a C++ exception from
 * the tokenizer comes back as INT32_MIN with *error set instead of crossing into C. */
int32_t lcpp_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                      llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special,
                      char ** error);

/* llama.cpp's log, kept per thread (lcpp_log.cpp).  llama.cpp, ggml and libmtmd log
 * on the thread that makes a call, so what a thread logs between lcpp_log_begin()
 * and lcpp_log_end() comes from its own calls (a failure's reason among it),
 * whatever other threads log meanwhile.  No file descriptor is touched. */

/* The ggml_log_callback to install (llama_log_set, mtmd_helper_log_set): it keeps the
 * calling thread's lines while a capture is open there and passes every complete
 * line to the sink. */
void lcpp_log_route(enum ggml_log_level level, const char * text, void * user_data);

/* Where complete lines go: the level (CONT resolved to its line's) and the text
 * without its newline.  NULL: nowhere (at interpreter exit). */
typedef void (*lcpp_log_sink)(enum ggml_log_level level, const char * line);
void lcpp_log_set_sink(lcpp_log_sink sink);
/* Only lines at `min_level` or above go to the sink (captures keep every level). */
void lcpp_log_set_sink_level(enum ggml_log_level min_level);

/* Open a capture on this thread (captures nest); returns the mark to read from. */
size_t lcpp_log_begin(void);

/* The lines this thread logged since `mark` at `min_level` or above, joined by
 * newlines (free with lcpp_string_free); NULL when there are none. */
char * lcpp_log_read(size_t mark, enum ggml_log_level min_level);

/* Close this thread's innermost capture; closing the outermost forgets the lines. */
void lcpp_log_end(void);

/* Abort callback for llama_set_abort_callback: aborts while *(int *)flag != 0. */
bool lcpp_abort_when_flag_set(void * flag);

/* Append one token to a batch. */
void lcpp_batch_add(struct llama_batch * batch, llama_token token, llama_pos pos,
                    llama_seq_id seq_id, bool logits);

/* Decode tokens[0..n) of one sequence from position pos0 in chunks of at most
 * n_batch, asking for logits of the last token only.  Returns llama_decode's
 * status of the first failing chunk, or 0. */
int32_t lcpp_decode_sequence(struct llama_context * ctx, struct llama_batch * batch, int32_t n_batch,
                             const llama_token * tokens, int32_t n, llama_pos pos0, llama_seq_id seq_id);

/* Append tokens[0..n) of one sequence at positions pos0.. to a batch; only the
 * last one asks for logits, and only when `logits_last` is true. */
void lcpp_batch_add_run(struct llama_batch * batch, const llama_token * tokens, int32_t n, llama_pos pos0,
                        llama_seq_id seq_id, bool logits_last);

/* Sample n sequences after one decode, each with its own chain, optional
 * grammar and candidate count tops[i] (as lcpp_sample), at logits index idxs[i].  Writes tokens[i] (-1 where
 * sampling failed; *error then holds the first failure's reason), eog[i], and the
 * token's text piece at pieces + i * piece_stride with its length in
 * piece_lens[i] (negative: the piece needs that many bytes).  Returns the number
 * of failures. */
int32_t lcpp_sample_many(struct llama_context * ctx, const struct llama_vocab * vocab, int32_t n,
                         struct llama_sampler * const * chains, struct llama_sampler * const * grammars,
                         const int32_t * tops, const int32_t * idxs, llama_token * tokens, bool * eog, char * pieces,
                         int32_t piece_stride, int32_t * piece_lens, char ** error);

/* Verify a speculative draft of one sequence.  The batch held the sequence's
 * next token at logits index idx0 and draft[0..n_draft) after it, each with
 * logits.  Samples at idx0, idx0 + 1, ... (as lcpp_sample, accepting each token
 * in the chain and grammar) while the token sampled equals the draft token it
 * verifies and is not end-of-generation.  Writes the sampled tokens to tokens
 * (room for n_draft + 1) and returns their number: the accepted draft tokens
 * plus one.  Returns -1 with *error set when sampling failed at the first index;
 * a later failure ends the run early instead, so what was sampled is kept. */
int32_t lcpp_sample_draft(struct llama_context * ctx, const struct llama_vocab * vocab,
                          struct llama_sampler * chain, struct llama_sampler * grammar, int32_t top, int32_t idx0,
                          const llama_token * draft, int32_t n_draft, llama_token * tokens, char ** error);

/* Sample a token at logits index `idx` with `chain` and an optional `grammar`
 * sampler (kept outside the chain), and accept it in both.  The grammar is
 * checked against the chain's choice first and applied to the whole vocabulary
 * only when it rejects that choice, as llama.cpp's own common sampler does.
 * With `top` > 0 the chain's first try sees only the `top` highest logits (in
 * id order): the caller promises that its choice cannot depend on any other
 * token (greedy, or top-k with k + the tokens its earlier stages may lower <=
 * top), which saves building the whole vocabulary's candidates.  0: all.
 * Returns the token, or -1 with *error set when llama.cpp threw (for example a
 * grammar that admits nothing more). */
llama_token lcpp_sample(struct llama_sampler * chain, struct llama_sampler * grammar,
                        struct llama_context * ctx, int32_t idx, int32_t top, char ** error);

/* The probabilities after sampling (llama-server's post_sampling_probs), read after this
 * thread's last lcpp_sample, lcpp_sample_many or lcpp_sample_draft: the softmax of the
 * logits of the candidates the chain's final choice was made among (after every stage:
 * bias, penalties, grammar, truncation, temperature); under greedy decoding the chosen
 * token alone, with probability 1.  Writes at most k ids and probabilities, most likely
 * first (ties to the lower id), leaving out zeros, and their number to *n_top; returns
 * `token`'s probability (0 when it is not among them, NaN before any sampling). */
float lcpp_sampled_probs(llama_token token, int32_t k, llama_token * top_ids, float * top_probs, int32_t * n_top);

/* Repeat/frequency/presence penalties over the last `last_n` tokens, computed
 * exactly as llama.cpp's llama_sampler_init_penalties does, but touching only
 * the penalised tokens when the candidates are the whole vocabulary in id order
 * (instead of a hash lookup for each of the vocabulary's tokens).  NULL on
 * allocation failure. */
struct llama_sampler * lcpp_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                   float present);

/* Accept a token already in the sequence; 0, or 1 with *error set. */
int lcpp_sampler_accept(struct llama_sampler * smpl, llama_token token, char ** error);

/* Log-probability of `token` and the k most likely tokens at logits index `idx`.
 * Writes k ids and log-probs (descending) and returns the token's log-prob. */
float lcpp_logprobs(struct llama_context * ctx, int32_t idx, int32_t n_vocab, llama_token token,
                    int32_t k, llama_token * top_ids, float * top_logprobs);


/* Incremental parsing of a chat reply (lcpp_chat_stream.cpp). */
typedef struct lcpp_chat_stream lcpp_chat_stream;

enum lcpp_delta_kind { LCPP_DELTA_CONTENT = 0, LCPP_DELTA_REASONING = 1, LCPP_DELTA_TOOL_CALL = 2 };
enum lcpp_feed_mode {
    LCPP_FEED_MORE = 0, /* more text will follow */
    LCPP_FEED_CUT = 1,  /* the reply was cut off (max_tokens): parse what there is as partial */
    LCPP_FEED_END = 2,  /* the reply is complete */
};

/* One change of the parsed reply: content or reasoning text, or a tool call's argument
 * fragment (with its id and name on the call's first delta, else ""). */
typedef struct lcpp_chat_delta {
    int32_t kind;
    int32_t index; /* the tool call's index, -1 for text */
    const char * text;
    const char * name;
    const char * id;
} lcpp_chat_delta;

/* A parser for one reply; `params_json` carries format, generation_prompt and parser as
 * returned by lcpp_chat_apply.  NULL with *error set on failure. */
lcpp_chat_stream * lcpp_chat_stream_new(const char * params_json, char ** error);
void lcpp_chat_stream_free(lcpp_chat_stream * stream);

/* Append generated text and return the number of deltas it makes (*deltas points at them
 * until the next call), or -1 with *error set. */
int32_t lcpp_chat_stream_feed(lcpp_chat_stream * stream, const char * text, int32_t len, int32_t mode,
                              const lcpp_chat_delta ** deltas, char ** error);

/* The number of tool calls in the reply as parsed so far. */
int32_t lcpp_chat_stream_tool_calls(const lcpp_chat_stream * stream);

/* A sampler that counts tokens between the template's thinking tags and, once `budget`
 * tokens are spent, forces the end tag (llama.cpp's reasoning-budget sampler).
 * `thinking_open`: the template's generation prompt already opened the thinking block,
 * so counting starts at once.  NULL with *error set on failure. */
struct llama_sampler * lcpp_reasoning_budget_init(const struct llama_vocab * vocab, const char * start_tag,
                                                  const char * end_tag, int32_t budget, bool thinking_open,
                                                  char ** error);

#ifdef __cplusplus
}
#endif

#endif /* LCPP_SHIM_H */
