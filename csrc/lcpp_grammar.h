/* Fast grammar-constrained sampling (lcpp_grammar.cpp): llama.cpp's grammars,
 * with the admitted tokens found through an index of the vocabulary and cached
 * per grammar state.  C interface; every function is callable from C and never
 * throws. */
#ifndef LCPP_GRAMMAR_H
#define LCPP_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lcpp_vocab_index lcpp_vocab_index;

/* A prefix tree of the vocabulary's token texts (built once per model and
 * shared by every grammar sampler of that model).  NULL on failure. */
lcpp_vocab_index * lcpp_vocab_index_new(const struct llama_vocab * vocab);
void lcpp_vocab_index_free(lcpp_vocab_index * index);
/* Number of nodes in the tree (for tests and statistics). */
int32_t lcpp_vocab_index_nodes(const lcpp_vocab_index * index);

/* A grammar sampler for lcpp_sample and friends: llama.cpp's grammar (same
 * parser, same language, lazy triggers included) with fast candidate search.
 * `index` may be NULL (then llama.cpp's own full check is the fallback).
 * `need` is how many admitted tokens, in descending logit order, the sampler
 * chain needs to make its choice: 1 for greedy, top_k for top-k sampling, 0 for
 * "all of them".  NULL with *error set (the reason, with the line for a syntax
 * error) when the grammar is invalid. */
struct llama_sampler * lcpp_grammar_init(const struct llama_vocab * vocab, lcpp_vocab_index * index,
                                         const char * grammar, const char * root, bool lazy,
                                         const char ** trigger_patterns, size_t n_trigger_patterns,
                                         const llama_token * trigger_tokens, size_t n_trigger_tokens, int32_t need,
                                         char ** error);

/* 0 when llama.cpp's parser accepts `grammar` with a rule named `root`; else 1
 * with the reason (and the line of a syntax error) in *error.  llama.cpp itself
 * would print that reason to stderr. */
int lcpp_grammar_check(const struct llama_vocab * vocab, const char * grammar, const char * root, char ** error);

/* JSON schema (text) -> GBNF with llama.cpp's converter.  The patterns it cannot
 * express (it accepts any string there) are reported in *warnings, one line
 * each (NULL when there are none), instead of the warning llama.cpp prints to
 * stderr.  0 with the grammar in *out; else 1 with the reason in *out. */
int lcpp_json_schema_to_grammar_ex(const char * schema_json, char ** out, char ** warnings);

/* The tokens the grammar admits in its current state, ascending, into
 * out[0..cap); returns how many there are (-1 when `smpl` is not an lcpp
 * grammar sampler or on failure).  With `reference`, by llama.cpp's own check
 * of every token (slow; for tests). */
int32_t lcpp_grammar_admitted(struct llama_sampler * smpl, bool reference, llama_token * out, int32_t cap);

#ifdef __cplusplus
}

#include <vector>

/* C++ only (lcpp_shim.cpp): whether `smpl` was made by lcpp_grammar_init, and
 * sampling with it (throws on failure); the chain's first, unconstrained try
 * sees the `top` highest logits only (0: all), as in lcpp_sample. */
bool lcpp_is_grammar_sampler(const struct llama_sampler * smpl);
llama_token lcpp_grammar_sample(struct llama_sampler * chain, struct llama_sampler * grammar,
                                struct llama_context * ctx, int32_t idx, int32_t top);

/* C++ only (lcpp_shim.cpp): the candidates a chain samples from, in id order: the
 * whole vocabulary, or with `top` > 0 only the `top` highest logits (ties to the
 * lower id), stored in `out`. */
llama_token_data_array lcpp_candidates(const float * logits, int32_t n_vocab, int32_t top,
                                       std::vector<llama_token_data> & out);

/* C++ only (lcpp_shim.cpp): note the candidates the chain made its final choice among,
 * for lcpp_sampled_probs; `final` must stay valid until this thread samples again. */
void lcpp_note_choice(const llama_token_data_array & final, struct llama_sampler * chain);
#endif

#endif /* LCPP_GRAMMAR_H */
