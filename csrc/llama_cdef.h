/* cffi declarations (cdef) of the part of llama.h and lcpp_shim.h we use.
 *
 * API mode: the compiler checks these against the real headers.  Structs we only
 * pass around are opaque; structs whose fields we touch are partial (`...;`),
 * so their layout comes from llama.h, never from this file.
 */

typedef int32_t llama_pos;
typedef int32_t llama_token;
typedef int32_t llama_seq_id;

struct llama_vocab;
struct llama_model;
struct llama_context;
struct llama_sampler;
struct llama_adapter_lora;
typedef struct llama_memory_i * llama_memory_t;

/* ggml's backend devices (ggml-backend.h) */
struct ggml_backend_device;
struct ggml_backend_reg;
typedef struct ggml_backend_device * ggml_backend_dev_t;
typedef struct ggml_backend_reg * ggml_backend_reg_t;
enum ggml_backend_dev_type { GGML_BACKEND_DEVICE_TYPE_CPU, GGML_BACKEND_DEVICE_TYPE_GPU,
                             GGML_BACKEND_DEVICE_TYPE_IGPU, GGML_BACKEND_DEVICE_TYPE_ACCEL, ... };

enum ggml_log_level { GGML_LOG_LEVEL_NONE, GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_INFO,
                      GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT, ... };
enum ggml_type { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0,
                 GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_IQ4_NL, GGML_TYPE_BF16, ... };
typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
typedef bool (*ggml_abort_callback)(void * data);
typedef bool (*llama_progress_callback)(float progress, void * user_data);

enum llama_split_mode { LLAMA_SPLIT_MODE_NONE, LLAMA_SPLIT_MODE_LAYER, LLAMA_SPLIT_MODE_ROW, ... };
enum llama_load_mode { LLAMA_LOAD_MODE_NONE, LLAMA_LOAD_MODE_MMAP, LLAMA_LOAD_MODE_MLOCK,
                       LLAMA_LOAD_MODE_MMAP_MLOCK, ... };
enum llama_pooling_type { LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_MEAN,
                          LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST, LLAMA_POOLING_TYPE_RANK, ... };
enum llama_flash_attn_type { LLAMA_FLASH_ATTN_TYPE_AUTO, LLAMA_FLASH_ATTN_TYPE_DISABLED,
                             LLAMA_FLASH_ATTN_TYPE_ENABLED, ... };
enum llama_rope_scaling_type { LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED, ... };

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token * token;
    float * embd;
    llama_pos * pos;
    int32_t * n_seq_id;
    llama_seq_id ** seq_id;
    int8_t * logits;
} llama_batch;

typedef struct llama_logit_bias {
    llama_token token;
    float bias;
} llama_logit_bias;

typedef struct llama_sampler_chain_params {
    bool no_perf;
    ...;
} llama_sampler_chain_params;

struct llama_model_params {
    int32_t n_gpu_layers;
    enum llama_split_mode split_mode;
    enum llama_load_mode load_mode;
    int32_t main_gpu;
    const float * tensor_split;
    llama_progress_callback progress_callback;
    void * progress_callback_user_data;
    bool vocab_only;
    bool use_extra_bufts;
    ggml_backend_dev_t * devices;
    ...;
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_ubatch;
    uint32_t n_seq_max;
    uint32_t n_outputs_max;
    int32_t n_threads;
    int32_t n_threads_batch;
    enum llama_rope_scaling_type rope_scaling_type;
    enum llama_pooling_type pooling_type;
    enum llama_flash_attn_type flash_attn_type;
    float rope_freq_base;
    float rope_freq_scale;
    enum ggml_type type_k;
    enum ggml_type type_v;
    ggml_abort_callback abort_callback;
    void * abort_callback_data;
    bool embeddings;
    bool offload_kqv;
    bool no_perf;
    bool kv_unified;
    bool swa_full;
    ...;
};

struct llama_perf_context_data {
    double t_load_ms;
    double t_p_eval_ms;
    double t_eval_ms;
    int32_t n_p_eval;
    int32_t n_eval;
    ...;
};

/* library */
const char * llama_print_system_info(void);
void llama_backend_init(void);
void llama_log_set(ggml_log_callback log_callback, void * user_data);
size_t llama_max_devices(void);
bool llama_supports_gpu_offload(void);
int64_t llama_time_us(void);

/* backend devices, and the RPC backend (ggml-rpc.h) */
size_t ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
const char * ggml_backend_dev_name(ggml_backend_dev_t device);
const char * ggml_backend_dev_description(ggml_backend_dev_t device);
void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
const char * ggml_backend_reg_name(ggml_backend_reg_t reg);
size_t ggml_backend_reg_dev_count(ggml_backend_reg_t reg);
ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index);
#define RPC_PROTO_MAJOR_VERSION ...
#define RPC_PROTO_MINOR_VERSION ...
#define GGML_RPC_MAX_SERVERS ...
ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);
void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir, size_t n_threads, size_t n_devices,
                                   ggml_backend_dev_t * devices);

/* model */
struct llama_model_params llama_model_default_params(void);
struct llama_model * llama_model_load_from_file(const char * path_model, struct llama_model_params params);
void llama_model_free(struct llama_model * model);
const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
int32_t llama_model_n_ctx_train(const struct llama_model * model);
int32_t llama_model_n_embd(const struct llama_model * model);
int32_t llama_model_n_layer(const struct llama_model * model);
int32_t llama_model_n_head(const struct llama_model * model);
uint64_t llama_model_size(const struct llama_model * model);
uint64_t llama_model_n_params(const struct llama_model * model);
int32_t llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size);
const char * llama_model_chat_template(const struct llama_model * model, const char * name);
int32_t llama_chat_builtin_templates(const char ** output, size_t len);
bool llama_model_has_encoder(const struct llama_model * model);
uint32_t llama_model_n_cls_out(const struct llama_model * model);
int32_t llama_model_meta_count(const struct llama_model * model);
int32_t llama_model_meta_key_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);
int32_t llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);
int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, char * buf, size_t buf_size);

/* LoRA adapters */
struct llama_adapter_lora * llama_adapter_lora_init(struct llama_model * model, const char * path_lora);
void llama_adapter_lora_free(struct llama_adapter_lora * adapter);
int32_t llama_adapter_meta_count(const struct llama_adapter_lora * adapter);
int32_t llama_adapter_meta_key_by_index(const struct llama_adapter_lora * adapter, int32_t i, char * buf, size_t buf_size);
int32_t llama_adapter_meta_val_str_by_index(const struct llama_adapter_lora * adapter, int32_t i, char * buf,
                                            size_t buf_size);
int32_t llama_set_adapters_lora(struct llama_context * ctx, struct llama_adapter_lora ** adapters, size_t n_adapters,
                                float * scales);

/* vocab */
int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
llama_token llama_vocab_bos(const struct llama_vocab * vocab);
llama_token llama_vocab_eos(const struct llama_vocab * vocab);
llama_token llama_vocab_eot(const struct llama_vocab * vocab);
bool llama_vocab_get_add_bos(const struct llama_vocab * vocab);
llama_token llama_vocab_sep(const struct llama_vocab * vocab);
bool llama_vocab_get_add_eos(const struct llama_vocab * vocab);
bool llama_vocab_get_add_sep(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_pre(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_suf(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_mid(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_pad(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_rep(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_sep(const struct llama_vocab * vocab);
bool llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);
bool llama_vocab_is_control(const struct llama_vocab * vocab, llama_token token);
const char * llama_vocab_get_text(const struct llama_vocab * vocab, llama_token token);
int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len, llama_token * tokens,
                       int32_t n_tokens_max, bool add_special, bool parse_special);
int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf, int32_t length,
                             int32_t lstrip, bool special);
int32_t llama_detokenize(const struct llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens, char * text,
                         int32_t text_len_max, bool remove_special, bool unparse_special);

/* context */
struct llama_context_params llama_context_default_params(void);
struct llama_context * llama_init_from_model(struct llama_model * model, struct llama_context_params params);
void llama_free(struct llama_context * ctx);
uint32_t llama_n_ctx(const struct llama_context * ctx);
uint32_t llama_n_batch(const struct llama_context * ctx);
uint32_t llama_n_ubatch(const struct llama_context * ctx);
uint32_t llama_n_seq_max(const struct llama_context * ctx);
enum llama_pooling_type llama_pooling_type(const struct llama_context * ctx);
llama_memory_t llama_get_memory(const struct llama_context * ctx);
struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
void llama_batch_free(struct llama_batch batch);
int32_t llama_encode(struct llama_context * ctx, struct llama_batch batch);
int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
float * llama_get_embeddings_ith(struct llama_context * ctx, int32_t i);
float * llama_get_embeddings_seq(struct llama_context * ctx, llama_seq_id seq_id);
struct llama_perf_context_data llama_perf_context(const struct llama_context * ctx);

/* KV cache (memory) */
void llama_memory_clear(llama_memory_t mem, bool data);
bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1);
void llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id);
llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);

/* state */
size_t llama_state_get_size(struct llama_context * ctx);
size_t llama_state_get_data(struct llama_context * ctx, uint8_t * dst, size_t size);
size_t llama_state_set_data(struct llama_context * ctx, const uint8_t * src, size_t size);
size_t llama_state_seq_get_size(struct llama_context * ctx, llama_seq_id seq_id);
size_t llama_state_seq_get_data(struct llama_context * ctx, uint8_t * dst, size_t size, llama_seq_id seq_id);
size_t llama_state_seq_set_data(struct llama_context * ctx, const uint8_t * src, size_t size, llama_seq_id dest_seq_id);

/* samplers */
struct llama_sampler_chain_params llama_sampler_chain_default_params(void);
struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);
void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);
int32_t llama_sampler_chain_n(const struct llama_sampler * chain);
void llama_sampler_free(struct llama_sampler * smpl);
void llama_sampler_reset(struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_init_greedy(void);
struct llama_sampler * llama_sampler_init_dist(uint32_t seed);
struct llama_sampler * llama_sampler_init_top_k(int32_t k);
struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_typical(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_temp(float t);
struct llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
                                                     const llama_logit_bias * logit_bias);
struct llama_sampler * llama_sampler_init_grammar(const struct llama_vocab * vocab, const char * grammar_str,
                                                  const char * grammar_root);
struct llama_sampler * llama_sampler_init_grammar_lazy_patterns(const struct llama_vocab * vocab,
                                                                const char * grammar_str, const char * grammar_root,
                                                                const char ** trigger_patterns,
                                                                size_t num_trigger_patterns,
                                                                const llama_token * trigger_tokens,
                                                                size_t num_trigger_tokens);

/* libmtmd: images and audio through a projector (mtmd.h, mtmd-helper.h) */
typedef struct mtmd_context mtmd_context;
typedef struct mtmd_bitmap mtmd_bitmap;
typedef struct mtmd_input_chunk mtmd_input_chunk;
typedef struct mtmd_input_chunks mtmd_input_chunks;
typedef struct mtmd_helper_video mtmd_helper_video;
struct mtmd_helper_embd_batch;
enum mtmd_input_chunk_type { MTMD_INPUT_CHUNK_TYPE_TEXT, MTMD_INPUT_CHUNK_TYPE_IMAGE, MTMD_INPUT_CHUNK_TYPE_AUDIO,
                             ... };
struct mtmd_context_params {
    bool use_gpu;
    bool print_timings;
    int n_threads;
    const char * media_marker;
    bool warmup;
    ...;
};
typedef struct mtmd_input_text {
    const char * text;
    size_t text_len;
    bool add_special;
    bool parse_special;
} mtmd_input_text;
typedef struct mtmd_helper_init_opt { ...; } mtmd_helper_init_opt;
struct mtmd_helper_bitmap_wrapper {
    mtmd_bitmap * bitmap;
    mtmd_helper_video * video_ctx;
};
typedef int32_t (*mtmd_helper_post_decode_callback)(const struct mtmd_helper_embd_batch * batch, void * user_data);
int32_t llama_model_n_embd_inp(const struct llama_model * model);
struct mtmd_context_params mtmd_context_params_default(void);
mtmd_context * mtmd_init_from_file(const char * mmproj_fname, const struct llama_model * text_model,
                                   const struct mtmd_context_params ctx_params);
void mtmd_free(mtmd_context * ctx);
bool mtmd_decode_use_non_causal(const mtmd_context * ctx, const mtmd_input_chunk * chunk);
bool mtmd_decode_use_mrope(const mtmd_context * ctx);
bool mtmd_support_vision(const mtmd_context * ctx);
bool mtmd_support_audio(const mtmd_context * ctx);
int mtmd_get_audio_sample_rate(const mtmd_context * ctx);
mtmd_bitmap * mtmd_bitmap_init(uint32_t nx, uint32_t ny, const unsigned char * data);
mtmd_bitmap * mtmd_bitmap_init_from_audio(size_t n_samples, const float * data);
uint32_t mtmd_bitmap_get_nx(const mtmd_bitmap * bitmap);
uint32_t mtmd_bitmap_get_ny(const mtmd_bitmap * bitmap);
bool mtmd_bitmap_is_audio(const mtmd_bitmap * bitmap);
void mtmd_bitmap_free(mtmd_bitmap * bitmap);
const char * mtmd_bitmap_get_id(const mtmd_bitmap * bitmap);
void mtmd_bitmap_set_id(mtmd_bitmap * bitmap, const char * id);
mtmd_input_chunks * mtmd_input_chunks_init(void);
size_t mtmd_input_chunks_size(const mtmd_input_chunks * chunks);
const mtmd_input_chunk * mtmd_input_chunks_get(const mtmd_input_chunks * chunks, size_t idx);
void mtmd_input_chunks_free(mtmd_input_chunks * chunks);
enum mtmd_input_chunk_type mtmd_input_chunk_get_type(const mtmd_input_chunk * chunk);
const llama_token * mtmd_input_chunk_get_tokens_text(const mtmd_input_chunk * chunk, size_t * n_tokens_output);
size_t mtmd_input_chunk_get_n_tokens(const mtmd_input_chunk * chunk);
const char * mtmd_input_chunk_get_id(const mtmd_input_chunk * chunk);
llama_pos mtmd_input_chunk_get_n_pos(const mtmd_input_chunk * chunk);
mtmd_input_chunk * mtmd_input_chunk_copy(const mtmd_input_chunk * chunk);
void mtmd_input_chunk_free(mtmd_input_chunk * chunk);
int32_t mtmd_tokenize(const mtmd_context * ctx, mtmd_input_chunks * output, const mtmd_input_text * text,
                      const mtmd_bitmap * const * bitmaps, size_t n_bitmaps);
int32_t mtmd_encode_chunk(mtmd_context * ctx, const mtmd_input_chunk * chunk);
float * mtmd_get_output_embd(mtmd_context * ctx);
void mtmd_helper_log_set(ggml_log_callback log_callback, void * user_data);
struct mtmd_helper_init_opt mtmd_helper_init_opt_default(void);
struct mtmd_helper_bitmap_wrapper mtmd_helper_bitmap_init_from_buf(const mtmd_context * ctx, const unsigned char * buf,
                                                                   size_t len, bool placeholder,
                                                                   struct mtmd_helper_init_opt opt);
void mtmd_helper_video_free(mtmd_helper_video * ctx);
int32_t mtmd_helper_decode_image_chunk(mtmd_context * ctx, struct llama_context * lctx, const mtmd_input_chunk * chunk,
                                       float * encoded_embd, llama_pos n_past, llama_seq_id seq_id, int32_t n_batch,
                                       llama_pos * new_n_past, mtmd_helper_post_decode_callback callback,
                                       void * user_data);

/* our shim */
typedef struct lcpp_chat_templates lcpp_chat_templates;
const char * lcpp_package_version(void);
void lcpp_string_free(char * s);
int lcpp_chat_templates_init(const struct llama_model * model, const char * template_override,
                             lcpp_chat_templates ** out, char ** err);
void lcpp_chat_templates_free(lcpp_chat_templates * tmpls);
int lcpp_chat_apply(const lcpp_chat_templates * tmpls, const char * request_json, char ** out);
int lcpp_chat_parse(const char * params_json, const char * text, bool is_partial, char ** out);
int32_t lcpp_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                      llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special,
                      char ** error);
void lcpp_log_route(enum ggml_log_level level, const char * text, void * user_data);
typedef void (*lcpp_log_sink)(enum ggml_log_level level, const char * line);
void lcpp_log_set_sink(lcpp_log_sink sink);
void lcpp_log_set_sink_level(enum ggml_log_level min_level);
size_t lcpp_log_begin(void);
char * lcpp_log_read(size_t mark, enum ggml_log_level min_level);
void lcpp_log_end(void);
bool lcpp_abort_when_flag_set(void * flag);
void lcpp_batch_add(struct llama_batch * batch, llama_token token, llama_pos pos, llama_seq_id seq_id, bool logits);
int32_t lcpp_decode_sequence(struct llama_context * ctx, struct llama_batch * batch, int32_t n_batch,
                             const llama_token * tokens, int32_t n, llama_pos pos0, llama_seq_id seq_id);
llama_token lcpp_sample(struct llama_sampler * chain, struct llama_sampler * grammar, struct llama_context * ctx,
                        int32_t idx, int32_t top, char ** error);
void lcpp_batch_add_run(struct llama_batch * batch, const llama_token * tokens, int32_t n, llama_pos pos0,
                        llama_seq_id seq_id, bool logits_last);
int32_t lcpp_sample_many(struct llama_context * ctx, const struct llama_vocab * vocab, int32_t n,
                         struct llama_sampler * const * chains, struct llama_sampler * const * grammars,
                         const int32_t * tops, const int32_t * idxs, llama_token * tokens, bool * eog, char * pieces,
                         int32_t piece_stride, int32_t * piece_lens, char ** error);
int32_t lcpp_sample_draft(struct llama_context * ctx, const struct llama_vocab * vocab,
                          struct llama_sampler * chain, struct llama_sampler * grammar, int32_t top, int32_t idx0,
                          const llama_token * draft, int32_t n_draft, llama_token * tokens, char ** error);
int lcpp_sampler_accept(struct llama_sampler * smpl, llama_token token, char ** error);
struct llama_sampler * lcpp_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                   float present);
float lcpp_sampled_probs(llama_token token, int32_t k, llama_token * top_ids, float * top_probs, int32_t * n_top);
float lcpp_logprobs(struct llama_context * ctx, int32_t idx, int32_t n_vocab, llama_token token, int32_t k,
                    llama_token * top_ids, float * top_logprobs);

/* incremental chat parsing and the reasoning budget (lcpp_chat_stream.cpp) */
typedef struct lcpp_chat_stream lcpp_chat_stream;
enum lcpp_delta_kind { LCPP_DELTA_CONTENT, LCPP_DELTA_REASONING, LCPP_DELTA_TOOL_CALL };
enum lcpp_feed_mode { LCPP_FEED_MORE, LCPP_FEED_CUT, LCPP_FEED_END };
typedef struct lcpp_chat_delta {
    int32_t kind;
    int32_t index;
    const char * text;
    const char * name;
    const char * id;
} lcpp_chat_delta;
lcpp_chat_stream * lcpp_chat_stream_new(const char * params_json, char ** error);
void lcpp_chat_stream_free(lcpp_chat_stream * stream);
int32_t lcpp_chat_stream_feed(lcpp_chat_stream * stream, const char * text, int32_t len, int32_t mode,
                              const lcpp_chat_delta ** deltas, char ** error);
int32_t lcpp_chat_stream_tool_calls(const lcpp_chat_stream * stream);
struct llama_sampler * lcpp_reasoning_budget_init(const struct llama_vocab * vocab, const char * start_tag,
                                                  const char * end_tag, int32_t budget, bool thinking_open,
                                                  char ** error);

/* callbacks into Python */
extern "Python" void lcpp_on_log_line(enum ggml_log_level level, const char * line);
extern "Python" bool lcpp_on_progress(float progress, void * user_data);

/* fast grammars (lcpp_grammar.h) */
typedef struct lcpp_vocab_index lcpp_vocab_index;
lcpp_vocab_index * lcpp_vocab_index_new(const struct llama_vocab * vocab);
void lcpp_vocab_index_free(lcpp_vocab_index * index);
int32_t lcpp_vocab_index_nodes(const lcpp_vocab_index * index);
struct llama_sampler * lcpp_grammar_init(const struct llama_vocab * vocab, lcpp_vocab_index * index,
                                         const char * grammar, const char * root, bool lazy,
                                         const char ** trigger_patterns, size_t n_trigger_patterns,
                                         const llama_token * trigger_tokens, size_t n_trigger_tokens, int32_t need,
                                         char ** error);
int lcpp_grammar_check(const struct llama_vocab * vocab, const char * grammar, const char * root, char ** error);
int lcpp_json_schema_to_grammar_ex(const char * schema_json, char ** out, char ** warnings);
int32_t lcpp_grammar_admitted(struct llama_sampler * smpl, bool reference, llama_token * out, int32_t cap);
