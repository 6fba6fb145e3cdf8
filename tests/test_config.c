/* test_config.c: configurations (model/config.c): every preset parses with the dimensions of
 * spec 1.1 / 2.6; parameter counts against spec 2.6's table and the published Gemma 2 totals;
 * FLOPs against hand-derived values and a brute-force count of visible keys; transformers'
 * defaults and legacy names; refusal of bad configs with the field named; save/load round trip;
 * preset resolution. Run from the repository root (tests/run.sh does). */
#include <cjson/cJSON.h>
#include <unistd.h>
#include "tests/check.h"
#include "model/config.h"
#include "model/util.h"

static const char *presets[] = {
  "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "gemma2-s", "gemma2-b",
  "t5gemma-s-s", "t5gemma-b-b", "t5gemma-l-l", "t5gemma-ml-ml", "t5gemma-xl-xl",
  "t5gemma-2b-2b", "t5gemma-9b-2b", "t5gemma-9b-9b",
  "tiny-gemma2", "tiny-t5gemma", "tiny-t5gemma-unequal",
};
#define NPRESETS ((int)(sizeof presets / sizeof *presets))

/* dims of spec 1.1 / 2.6: L, d, F, H, h, K, qpas */
typedef struct { int L, d, F, H, h, K, q; } Dims;
static const Dims D_S = {8, 512, 1024, 8, 64, 8, 64}, D_B = {12, 768, 2048, 12, 64, 12, 64},
                  D_L = {24, 1024, 2816, 16, 64, 16, 64}, D_ML = {26, 1152, 6912, 4, 256, 4, 256},
                  D_XL = {24, 2048, 5120, 32, 64, 32, 64}, D_2B = {26, 2304, 9216, 8, 256, 4, 256},
                  D_9B = {42, 3584, 14336, 16, 256, 8, 256}, D_27B = {46, 4608, 36864, 32, 128, 16, 144},
                  D_TINY = {4, 64, 128, 4, 16, 2, 16}, D_TINY_ENC = {6, 96, 192, 6, 16, 3, 16};

static int dims_match(const StackConfig *s, Dims d, int vocab, int window, int maxpos) {
  int ok = s->num_hidden_layers == d.L && s->hidden_size == d.d && s->intermediate_size == d.F &&
           s->num_attention_heads == d.H && s->head_dim == d.h && s->num_key_value_heads == d.K &&
           s->query_pre_attn_scalar == (float)d.q && s->vocab_size == vocab && s->sliding_window == window &&
           s->max_position_embeddings == maxpos && s->rope_theta == 10000.0f && s->attn_logit_softcapping == 50.0f &&
           s->final_logit_softcapping == 30.0f && s->rms_norm_eps == 1e-6f && strcmp(s->hidden_activation, "gelu_pytorch_tanh") == 0;
  for (int i = 0; i < d.L; i++) ok = ok && s->layer_sliding[i] == (i % 2 == 0);
  return ok;
}

TEST(presets_have_spec_dims) {
  struct { const char *name; int kind; Dims enc, dec; int vocab, window, maxpos; } want[] = {
    {"gemma-2-2b", MODEL_GEMMA2, {0}, D_2B, 256000, 4096, 8192},
    {"gemma-2-9b", MODEL_GEMMA2, {0}, D_9B, 256000, 4096, 8192},
    {"gemma-2-27b", MODEL_GEMMA2, {0}, D_27B, 256000, 4096, 8192},
    {"gemma2-s", MODEL_GEMMA2, {0}, D_S, 256000, 4096, 8192},
    {"gemma2-b", MODEL_GEMMA2, {0}, D_B, 256000, 4096, 8192},
    {"t5gemma-s-s", MODEL_T5GEMMA, D_S, D_S, 256000, 4096, 8192},
    {"t5gemma-b-b", MODEL_T5GEMMA, D_B, D_B, 256000, 4096, 8192},
    {"t5gemma-l-l", MODEL_T5GEMMA, D_L, D_L, 256000, 4096, 8192},
    {"t5gemma-ml-ml", MODEL_T5GEMMA, D_ML, D_ML, 256000, 4096, 8192},
    {"t5gemma-xl-xl", MODEL_T5GEMMA, D_XL, D_XL, 256000, 4096, 8192},
    {"t5gemma-2b-2b", MODEL_T5GEMMA, D_2B, D_2B, 256000, 4096, 8192},
    {"t5gemma-9b-2b", MODEL_T5GEMMA, D_9B, D_2B, 256000, 4096, 8192},
    {"t5gemma-9b-9b", MODEL_T5GEMMA, D_9B, D_9B, 256000, 4096, 8192},
    {"tiny-gemma2", MODEL_GEMMA2, {0}, D_TINY, 512, 8, 512},
    {"tiny-t5gemma", MODEL_T5GEMMA, D_TINY, D_TINY, 512, 8, 512},
    {"tiny-t5gemma-unequal", MODEL_T5GEMMA, D_TINY_ENC, D_TINY, 512, 8, 512},
  };
  CHECK_EQ_INT(sizeof want / sizeof *want, NPRESETS);
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    ModelConfig c;
    CHECK_MSG(config_resolve(want[i].name, &c) == 0, "%s: %s", want[i].name, t5g_last_error());
    CHECK_STR(c.name, want[i].name);
    CHECK_MSG((int)c.kind == want[i].kind, "%s: kind %d", want[i].name, c.kind);
    CHECK_MSG(dims_match(&c.dec, want[i].dec, want[i].vocab, want[i].window, want[i].maxpos), "%s: decoder dims", want[i].name);
    CHECK(c.tie_word_embeddings == 1 && c.pad_token_id == 0 && c.eos_token_id == 1 && c.bos_token_id == 2);
    CHECK(c.encoder_causal == 0 && c.embed_scale_bf16 == 0);
    if (want[i].kind == MODEL_T5GEMMA) {
      CHECK_MSG(dims_match(&c.enc, want[i].enc, want[i].vocab, want[i].window, want[i].maxpos), "%s: encoder dims", want[i].name);
      CHECK_EQ_INT(c.dec.cross_attention_hidden_size, want[i].enc.d);
      CHECK_EQ_INT(c.enc.cross_attention_hidden_size, 0);
    } else {
      CHECK_EQ_INT(c.dec.cross_attention_hidden_size, 0);
    }
  }
}

/* spec 2.6 "Parameter counts" table (B = 1e9): encoder non-embedding, decoder non-embedding,
 * embeddings (enc+dec), total, with the table's rounding. */
TEST(param_counts_match_spec_table) {
  struct { const char *name; double enc, dec, emb, total; } t[] = {
    {"t5gemma-s-s", 0.021, 0.029, 0.262, 0.31},
    {"t5gemma-b-b", 0.085, 0.113, 0.393, 0.59},
    {"t5gemma-l-l", 0.308, 0.409, 0.524, 1.24},
    {"t5gemma-ml-ml", 0.744, 0.867, 0.590, 2.20},
    {"t5gemma-xl-xl", 1.158, 1.561, 1.049, 3.77},
    {"t5gemma-2b-2b", 2.025, 2.393, 1.180, 5.60},
    {"t5gemma-9b-2b", 8.324, 2.461, 1.507, 12.29},
    {"t5gemma-9b-9b", 8.324, 10.174, 1.835, 20.33},
  };
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    ModelConfig c;
    CHECK_MSG(config_resolve(t[i].name, &c) == 0, "%s", t5g_last_error());
    ParamCounts p = config_param_counts(&c);
    CHECK_MSG(fabs(p.enc_body / 1e9 - t[i].enc) <= 0.0005, "%s enc %.4f", t[i].name, p.enc_body / 1e9);
    CHECK_MSG(fabs(p.dec_body / 1e9 - t[i].dec) <= 0.0005, "%s dec %.4f", t[i].name, p.dec_body / 1e9);
    CHECK_MSG(fabs((p.enc_embed + p.dec_embed) / 1e9 - t[i].emb) <= 0.0005, "%s emb %.4f", t[i].name, (p.enc_embed + p.dec_embed) / 1e9);
    CHECK_MSG(fabs(p.total / 1e9 - t[i].total) <= 0.005, "%s total %.4f", t[i].name, p.total / 1e9);
    CHECK_EQ_INT(p.total, p.enc_embed + p.enc_body + p.dec_embed + p.dec_body);
  }
}

/* Gemma 2 totals as published for the Hugging Face checkpoints (tied head counted once). */
TEST(param_counts_gemma2_published) {
  struct { const char *name; int64_t total; } t[] = {
    {"gemma-2-2b", 2614341888LL}, {"gemma-2-9b", 9241705984LL}, {"gemma-2-27b", 27227128320LL},
  };
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    ModelConfig c;
    CHECK_MSG(config_resolve(t[i].name, &c) == 0, "%s", t5g_last_error());
    ParamCounts p = config_param_counts(&c);
    CHECK_EQ_INT(p.total, t[i].total);
    CHECK_EQ_INT(p.enc_embed + p.enc_body, 0);
    CHECK_EQ_INT(p.dec_embed, (int64_t)256000 * c.dec.hidden_size);
  }
  /* tiny-t5gemma by hand: per layer q,o 64*64 each, k,v 32*64 each, mlp 3*64*128, norms 4*64:
   * 8192+4096+24576+256 = 37120; decoder adds cross q,o 8192, k,v 4096, norms 128 = 12416.
   * enc body 4*37120+64 = 148544; dec body 4*49536+64 = 198208; embeddings 512*64 each. */
  ModelConfig c;
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  ParamCounts p = config_param_counts(&c);
  CHECK_EQ_INT(p.enc_body, 148544);
  CHECK_EQ_INT(p.dec_body, 198208);
  CHECK_EQ_INT(p.enc_embed, 32768);
  CHECK_EQ_INT(p.total, 148544 + 198208 + 2 * 32768);
  /* unequal: cross k/v take the encoder width 96: 2 * (2*16) * 96 = 6144 instead of 4096 */
  CHECK(config_resolve("tiny-t5gemma-unequal", &c) == 0);
  p = config_param_counts(&c);
  CHECK_EQ_INT(p.dec_body, 198208 + 4 * (6144 - 4096));
  /* encoder layer: q,o 96*96 each, k,v 48*96 each, mlp 3*96*192, norms 4*96 = 18432+9216+55296+384 */
  CHECK_EQ_INT(p.enc_body, 6 * (18432 + 9216 + 55296 + 384) + 96);
}

/* Mean number of visible keys by brute force over (i, j) pairs. */
static double brute_keys(int T, int causal, int W) {
  double n = 0;
  for (int i = 0; i < T; i++)
    for (int j = 0; j < T; j++) {
      int vis = causal ? (j <= i && (W <= 0 || j > i - W)) : (W <= 0 || abs(i - j) < W);
      n += vis;
    }
  return n / T;
}

TEST(flops_per_token) {
  ModelConfig c;
  CHECK(config_resolve("tiny-gemma2", &c) == 0);
  /* T = 4 <= window 8: every layer sees (T+1)/2 = 2.5 keys on average.
   * matmuls per layer 2*(2*64*64 + 2*32*64 + 3*64*128) = 73728; attention 4*64*2.5 = 640;
   * 4 layers; LM head 2*512*64 = 65536. */
  CHECK_NEAR(config_flops_per_token(&c.dec, 4, 1, 0), 4 * (73728 + 640) + 65536, 1e-6);
  /* bidirectional (encoder-style) call: T keys each, no LM head */
  CHECK_NEAR(config_flops_per_token(&c.dec, 4, 0, 0), 4 * (73728 + 4 * 64 * 4), 1e-6);
  /* T = 20 > window 8: layers 0, 2 sliding, 1, 3 full */
  for (int causal = 0; causal <= 1; causal++) {
    double want = 4 * 73728 + 2 * 4 * 64 * brute_keys(20, causal, 8) + 2 * 4 * 64 * brute_keys(20, causal, 0) + (causal ? 65536 : 0);
    CHECK_NEAR(config_flops_per_token(&c.dec, 20, causal, 0), want, 1e-6);
  }
  /* decoder of tiny-t5gemma-unequal with cross_T = 10 encoder tokens, Td = 6:
   * self as above with T = 6 (< window): 3.5 keys; cross per layer: q,o 2*2*64*64 = 16384 and
   * 4*64*10 = 2560 */
  CHECK(config_resolve("tiny-t5gemma-unequal", &c) == 0);
  double dec_tok = 4 * (73728 + 4 * 64 * 3.5 + 16384 + 2560) + 65536;
  CHECK_NEAR(config_flops_per_token(&c.dec, 6, 1, 10), dec_tok, 1e-6);
  /* whole example: encoder tokens (bidirectional, T = 10 > window 8 on layers 0,2,4) plus the
   * cross K/V projections per encoder token: 4 decoder layers * 2*2*(2*16)*96 = 49152 */
  double enc_layer = 2.0 * (2 * 96 * 96 + 2 * 48 * 96 + 3 * 96 * 192);
  double enc_tok = 6 * enc_layer + 3 * 4 * 96 * brute_keys(10, 0, 8) + 3 * 4 * 96 * brute_keys(10, 0, 0);
  CHECK_NEAR(config_flops_per_example(&c, 10, 6), 10 * (enc_tok + 49152) + 6 * dec_tok, 1e-3);
  /* the parts: encoder (with cross K/V), decoder stack without the head, head per token, and the
   * cross-attention projections alone (k/v per encoder token, q/o per decoder token) */
  double pe, pd, ph, pw;
  config_flops_parts(&c, 10, 6, &pe, &pd, &ph, &pw);
  CHECK_NEAR(pe, 10 * (enc_tok + 49152), 1e-3);
  CHECK_NEAR(pd, 6 * (dec_tok - 65536), 1e-3);
  CHECK_NEAR(ph, 65536, 1e-9);
  CHECK_NEAR(pw, 10 * 49152 + 6 * 4 * 16384, 1e-6);
  CHECK_NEAR(pe + pd + 6 * ph, config_flops_per_example(&c, 10, 6), 1e-3);
  /* gemma2 example = Td tokens */
  CHECK(config_resolve("tiny-gemma2", &c) == 0);
  CHECK_NEAR(config_flops_per_example(&c, 0, 4), 4 * (4 * (73728 + 640) + 65536), 1e-6);
  config_flops_parts(&c, 0, 4, &pe, &pd, &ph, &pw);
  CHECK(pe == 0 && pw == 0);
  CHECK_NEAR(pd + 4 * ph, config_flops_per_example(&c, 0, 4), 1e-6);
  /* big model sanity: 2B decoder-only, ~2 * params per token plus attention */
  CHECK(config_resolve("gemma-2-2b", &c) == 0);
  double f = config_flops_per_token(&c.dec, 1, 1, 0);
  CHECK_NEAR(f, 2.0 * (config_param_counts(&c).total - 26 * 4 * 2304 - 2304) + 26 * 4 * 2048, 1.0);
}

/* ---- parsing: defaults, legacy names ---------------------------------------------------- */

TEST(defaults_as_transformers) {
  ModelConfig c;
  CHECK_MSG(config_parse("{\"model_type\": \"gemma2\"}", "min.json", &c) == 0, "%s", t5g_last_error());
  CHECK(c.kind == MODEL_GEMMA2);
  CHECK(dims_match(&c.dec, D_2B, 256000, 4096, 8192));
  CHECK_NEAR(c.dec.initializer_range, 0.02, 1e-9);
  CHECK(c.dec.attention_dropout == 0 && c.dec.dropout_rate == 0);
  CHECK_STR(c.name, "min");
  CHECK_MSG(config_parse("{\"model_type\": \"t5gemma\"}", "x/y/config.json", &c) == 0, "%s", t5g_last_error());
  CHECK(c.kind == MODEL_T5GEMMA);
  CHECK(dims_match(&c.enc, D_2B, 256000, 4096, 8192) && dims_match(&c.dec, D_2B, 256000, 4096, 8192));
  CHECK_EQ_INT(c.dec.cross_attention_hidden_size, 2304);
  CHECK_STR(c.name, "y");
  /* decoder absent: copied from the encoder (transformers) */
  CHECK(config_parse("{\"model_type\": \"t5gemma\", \"vocab_size\": 512, \"encoder\": {\"hidden_size\": 96, \"num_hidden_layers\": 3,"
                     " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 8, \"intermediate_size\": 32}}", "s", &c) == 0);
  CHECK(c.dec.hidden_size == 96 && c.dec.num_hidden_layers == 3 && c.dec.vocab_size == 512 && c.enc.vocab_size == 512);
  CHECK(c.enc.layer_sliding[0] == 1 && c.enc.layer_sliding[1] == 0 && c.enc.layer_sliding[2] == 1);
}

TEST(legacy_and_new_names) {
  /* hidden_act, sliding_window_size, no layer_types, eos list, rope_parameters, null softcap */
  const char *j =
    "{\"model_type\": \"gemma2\", \"vocab_size\": 300, \"hidden_size\": 32, \"intermediate_size\": 64,"
    " \"num_hidden_layers\": 5, \"num_attention_heads\": 4, \"num_key_value_heads\": 1, \"head_dim\": 8,"
    " \"query_pre_attn_scalar\": 8, \"hidden_act\": \"gelu_pytorch_tanh\", \"sliding_window_size\": 16,"
    " \"eos_token_id\": [1, 107], \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 500.0},"
    " \"rope_theta\": 10000.0, \"final_logit_softcapping\": null, \"dropout_rate\": 0.1}";
  ModelConfig c;
  CHECK_MSG(config_parse(j, "legacy.json", &c) == 0, "%s", t5g_last_error());
  CHECK_EQ_INT(c.dec.sliding_window, 16);
  CHECK_EQ_INT(c.eos_token_id, 1);
  CHECK_NEAR(c.dec.rope_theta, 500.0, 0);            /* rope_parameters wins, as in transformers */
  CHECK_NEAR(c.dec.final_logit_softcapping, 0, 0);   /* null = none */
  CHECK_NEAR(c.dec.attn_logit_softcapping, 50, 0);
  CHECK_NEAR(c.dec.dropout_rate, 0.1f, 0);
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(c.dec.layer_sliding[i], i % 2 == 0);
  /* explicit layer types, gelu_tanh synonym, per-layer-type rope parameters */
  const char *j2 =
    "{\"model_type\": \"gemma2\", \"num_hidden_layers\": 3, \"layer_types\": [\"full_attention\", \"full_attention\", \"sliding_attention\"],"
    " \"hidden_activation\": \"gelu_tanh\", \"rope_parameters\": {\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 20000},"
    " \"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": 20000}}}";
  CHECK_MSG(config_parse(j2, "j2", &c) == 0, "%s", t5g_last_error());
  CHECK(c.dec.layer_sliding[0] == 0 && c.dec.layer_sliding[1] == 0 && c.dec.layer_sliding[2] == 1);
  CHECK_STR(c.dec.hidden_activation, "gelu_pytorch_tanh");
  CHECK_NEAR(c.dec.rope_theta, 20000, 0);
  /* our extra keys */
  const char *j3 = "{\"model_type\": \"t5gemma\", \"t5gemma_c\": {\"encoder_causal\": true, \"embed_scale_bf16\": 1}}";
  CHECK_MSG(config_parse(j3, "j3", &c) == 0, "%s", t5g_last_error());
  CHECK(c.encoder_causal == 1 && c.embed_scale_bf16 == 1);
  /* top-level ids override the decoder's, decoder's used when absent */
  const char *j4 = "{\"model_type\": \"t5gemma\", \"decoder\": {\"bos_token_id\": 5, \"pad_token_id\": 3}, \"pad_token_id\": 7}";
  CHECK_MSG(config_parse(j4, "j4", &c) == 0, "%s", t5g_last_error());
  CHECK(c.bos_token_id == 5 && c.pad_token_id == 7 && c.eos_token_id == 1);
}

/* Configs as published on the Hub (gemma-2-2b style, and a T5Gemma 2B module with an eos list). */
TEST(hub_style_configs) {
  const char *g =
    "{\"architectures\": [\"Gemma2ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"attn_logit_softcapping\": 50.0, \"bos_token_id\": 2, \"cache_implementation\": \"hybrid\", \"eos_token_id\": [1, 107],"
    " \"final_logit_softcapping\": 30.0, \"head_dim\": 256, \"hidden_act\": \"gelu_pytorch_tanh\","
    " \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 2304, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 9216, \"max_position_embeddings\": 8192, \"model_type\": \"gemma2\","
    " \"num_attention_heads\": 8, \"num_hidden_layers\": 26, \"num_key_value_heads\": 4, \"pad_token_id\": 0,"
    " \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"sliding_window\": 4096,"
    " \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.42.4\", \"use_cache\": true, \"vocab_size\": 256000}";
  ModelConfig c;
  CHECK_MSG(config_parse(g, "hub/gemma-2-2b/config.json", &c) == 0, "%s", t5g_last_error());
  CHECK_STR(c.name, "gemma-2-2b");
  CHECK(c.eos_token_id == 1);
  CHECK(dims_match(&c.dec, D_2B, 256000, 4096, 8192));
  const char *t =
    "{\"model_type\": \"t5gemma\", \"is_encoder_decoder\": true, \"vocab_size\": 256000, \"encoder\": {"
    " \"attention_bias\": false, \"attention_dropout\": 0.0, \"attn_logit_softcapping\": 50.0, \"classifier_dropout_rate\": 0.0,"
    " \"dropout_rate\": 0.0, \"final_logit_softcapping\": 30.0, \"head_dim\": 256, \"hidden_activation\": \"gelu_pytorch_tanh\","
    " \"hidden_size\": 2304, \"initializer_range\": 0.02, \"intermediate_size\": 9216, \"max_position_embeddings\": 8192,"
    " \"model_type\": \"t5_gemma_module\", \"num_attention_heads\": 8, \"num_hidden_layers\": 26, \"num_key_value_heads\": 4,"
    " \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"sliding_window\": 4096,"
    " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 256000, \"pad_token_id\": 0, \"eos_token_id\": [1, 107]}}";
  CHECK_MSG(config_parse(t, "hub/t5gemma-2b-2b/config.json", &c) == 0, "%s", t5g_last_error());
  CHECK(dims_match(&c.enc, D_2B, 256000, 4096, 8192) && dims_match(&c.dec, D_2B, 256000, 4096, 8192));
  CHECK_EQ_INT(c.dec.cross_attention_hidden_size, 2304);
  CHECK(c.eos_token_id == 1 && c.pad_token_id == 0 && c.bos_token_id == 2);
}

/* ---- refusals ---------------------------------------------------------------------------- */

/* Load a preset's JSON, apply `edit` (a JSON object merged key by key into the root or into
 * the sub-object `sub`), parse, and expect an error naming source and `field`. */
static char *preset_text(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "configs/models/%s.json", name);
  return t5g_read_file(path, NULL);
}

static int refuse(const char *preset, const char *sub, const char *edit, const char *field, char *why, size_t nwhy) {
  char *text = preset_text(preset);
  if (!text) { snprintf(why, nwhy, "cannot read preset %s", preset); return 0; }
  cJSON *root = cJSON_Parse(text);
  free(text);
  cJSON *e = cJSON_Parse(edit);
  if (!root || !e) { snprintf(why, nwhy, "bad test JSON %s", edit); cJSON_Delete(root); cJSON_Delete(e); return 0; }
  cJSON *target = sub ? cJSON_GetObjectItemCaseSensitive(root, sub) : root;
  for (cJSON *it = e->child; it; it = it->next) {
    cJSON *copy = cJSON_Duplicate(it, 1);
    if (cJSON_GetObjectItemCaseSensitive(target, it->string)) cJSON_ReplaceItemInObjectCaseSensitive(target, it->string, copy);
    else cJSON_AddItemToObject(target, it->string, copy);
  }
  char *js = cJSON_Print(root);
  cJSON_Delete(root); cJSON_Delete(e);
  ModelConfig c;
  int rc = config_parse(js, "bad-config.json", &c);
  free(js);
  const char *msg = t5g_last_error();
  if (rc == 0) { snprintf(why, nwhy, "%s + %s was accepted", preset, edit); return 0; }
  if (!strstr(msg, "bad-config.json") || !strstr(msg, field)) { snprintf(why, nwhy, "message does not name %s: %s", field, msg); return 0; }
  return 1;
}

TEST(refuses_bad_configs) {
  struct { const char *preset, *sub, *edit, *field; } cases[] = {
    {"tiny-gemma2", NULL, "{\"layer_types\": [\"sliding_attention\", \"full_attention\", \"sliding_attention\"]}", "layer_types has 3 entries, num_hidden_layers is 4"},
    {"tiny-gemma2", NULL, "{\"layer_types\": [\"sliding_attention\", \"chunked_attention\", \"sliding_attention\", \"full_attention\"]}", "layer_types[1]"},
    {"tiny-gemma2", NULL, "{\"num_key_value_heads\": 3}", "num_key_value_heads (3)"},
    {"tiny-gemma2", NULL, "{\"head_dim\": 15}", "head_dim"},
    {"tiny-gemma2", NULL, "{\"hidden_activation\": \"gelu\"}", "hidden_activation"},
    {"tiny-gemma2", NULL, "{\"hidden_activation\": null, \"hidden_act\": \"silu\"}", "hidden_act"},
    {"tiny-gemma2", NULL, "{\"hidden_size\": 0}", "hidden_size"},
    {"tiny-gemma2", NULL, "{\"intermediate_size\": -5}", "intermediate_size"},
    {"tiny-gemma2", NULL, "{\"vocab_size\": 0}", "vocab_size"},
    {"tiny-gemma2", NULL, "{\"num_attention_heads\": 0}", "num_attention_heads"},
    {"tiny-gemma2", NULL, "{\"sliding_window\": 0}", "sliding_window"},
    {"tiny-gemma2", NULL, "{\"sliding_window\": null}", "sliding_window"},
    {"tiny-gemma2", NULL, "{\"query_pre_attn_scalar\": -1}", "query_pre_attn_scalar"},
    {"tiny-gemma2", NULL, "{\"rms_norm_eps\": 0}", "rms_norm_eps"},
    {"tiny-gemma2", NULL, "{\"num_hidden_layers\": 200, \"layer_types\": null}", "num_hidden_layers"},
    {"tiny-gemma2", NULL, "{\"num_hidden_layers\": 0}", "num_hidden_layers"},
    {"tiny-gemma2", NULL, "{\"tie_word_embeddings\": false}", "tie_word_embeddings"},
    {"tiny-gemma2", NULL, "{\"hidden_size\": \"64\"}", "hidden_size: expected an integer, found a string"},
    {"tiny-gemma2", NULL, "{\"head_dim\": 16.5}", "head_dim"},
    {"tiny-gemma2", NULL, "{\"hidden_size\": 1e15}", "hidden_size: 1e+15 is out of range: expected an integer from -2147483648 to 2147483647"},
    {"tiny-t5gemma", "encoder", "{\"num_key_value_heads\": -3e9}", "encoder.num_key_value_heads: -3e+09 is out of range"},
    {"tiny-gemma2", NULL, "{\"model_type\": \"gemma3\"}", "model_type"},
    {"tiny-gemma2", NULL, "{\"model_type\": 7}", "model_type"},
    {"tiny-gemma2", NULL, "{\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0}}", "rope_parameters.rope_type"},
    {"tiny-gemma2", NULL, "{\"rope_scaling\": {\"type\": \"linear\"}}", "rope_scaling"},
    {"tiny-gemma2", NULL, "{\"rope_parameters\": {\"sliding_attention\": {\"rope_theta\": 10000.0}, \"full_attention\": {\"rope_theta\": 1000000.0}}}", "rope_parameters"},
    {"tiny-gemma2", NULL, "{\"attention_bias\": true}", "attention_bias"},
    {"tiny-gemma2", NULL, "{\"use_bidirectional_attention\": true}", "use_bidirectional_attention"},
    {"tiny-gemma2", NULL, "{\"hidden_size\": 66}", "num_attention_heads (4)"},
    {"tiny-gemma2", NULL, "{\"eos_token_id\": 512}", "eos_token_id"},
    {"tiny-gemma2", NULL, "{\"t5gemma_c\": {\"encoder_causal\": 1}}", "encoder_causal"},
    {"tiny-gemma2", NULL, "{\"t5gemma_c\": {\"embed_scale\": 1}}", "t5gemma_c.embed_scale"},
    {"tiny-gemma2", NULL, "{\"t5gemma_c\": {\"embed_scale_bf16\": 2}}", "t5gemma_c.embed_scale_bf16"},
    {"tiny-t5gemma", "decoder", "{\"cross_attention_hidden_size\": 32}", "decoder.cross_attention_hidden_size"},
    {"tiny-t5gemma", "decoder", "{\"vocab_size\": 600}", "decoder.vocab_size"},
    {"tiny-t5gemma", "encoder", "{\"num_key_value_heads\": 3}", "encoder.num_attention_heads"},
    {"tiny-t5gemma", "encoder", "{\"layer_types\": [\"full_attention\"]}", "encoder.layer_types has 1 entries"},
    {"tiny-t5gemma", "decoder", "{\"hidden_activation\": \"relu\"}", "decoder.hidden_activation"},
    {"tiny-t5gemma", "decoder", "{\"head_dim\": 7}", "decoder.head_dim"},
    {"tiny-t5gemma", NULL, "{\"is_encoder_decoder\": false}", "is_encoder_decoder"},
    {"tiny-t5gemma", NULL, "{\"tie_word_embeddings\": false}", "tie_word_embeddings"},
    {"tiny-t5gemma", NULL, "{\"encoder\": 5}", "encoder"},
    {"tiny-t5gemma", NULL, "{\"vocab_size\": 1024}", "vocab_size"},
    {"tiny-t5gemma", NULL, "{\"dropout_rate\": 1.5}", "dropout_rate"},
  };
  char why[1024];
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    CHECK_MSG(refuse(cases[i].preset, cases[i].sub, cases[i].edit, cases[i].field, why, sizeof why), "case %zu: %s", i, why);
  /* t5gemma modules stating vocab 512 with no top-level vocab_size: transformers would use 256000 */
  char *text = preset_text("tiny-t5gemma");
  CHECK(text);
  cJSON *root = cJSON_Parse(text);
  free(text);
  cJSON_DeleteItemFromObjectCaseSensitive(root, "vocab_size");
  char *js = cJSON_Print(root);
  cJSON_Delete(root);
  ModelConfig c;
  int rc = config_parse(js, "novocab.json", &c);
  free(js);
  CHECK(rc != 0);
  CHECK_MSG(strstr(t5g_last_error(), "encoder.vocab_size is 512") && strstr(t5g_last_error(), "256000"), "%s", t5g_last_error());
  /* layer_types without num_hidden_layers: the Gemma2Config default 26 applies, and the message says so */
  const char *nl_sub[] = {NULL, "decoder"}, *nl_preset[] = {"tiny-gemma2", "tiny-t5gemma"};
  for (int k = 0; k < 2; k++) {
    text = preset_text(nl_preset[k]);
    CHECK(text);
    root = cJSON_Parse(text);
    free(text);
    cJSON *o = nl_sub[k] ? cJSON_GetObjectItemCaseSensitive(root, nl_sub[k]) : root;
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "layer_types")), 4);
    cJSON_DeleteItemFromObjectCaseSensitive(o, "num_hidden_layers");
    js = cJSON_Print(root);
    cJSON_Delete(root);
    CHECK(config_parse(js, "nolayers.json", &c) != 0);
    free(js);
    const char *want = k == 0 ? "nolayers.json: layer_types has 4 entries, but num_hidden_layers is not in the file and defaults to 26 "
                                "(the default of transformers' Gemma2Config); add \"num_hidden_layers\": 4"
                              : "nolayers.json: decoder.layer_types has 4 entries, but decoder.num_hidden_layers is not in the file and "
                                "defaults to 26 (the default of transformers' T5GemmaModuleConfig)";
    CHECK_MSG(strstr(t5g_last_error(), want), "%s", t5g_last_error());
  }
  /* a key twice (cJSON would read the first, Python's json the last): refused at any depth */
  CHECK(config_parse("{\"model_type\": \"gemma2\", \"hidden_size\": 64, \"vocab_size\": 512, \"hidden_size\": 128}", "dup.json", &c) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "dup.json: key \"hidden_size\" appears more than once"), "%s", t5g_last_error());
  CHECK(config_parse("{\"model_type\": \"t5gemma\", \"decoder\": {\"head_dim\": 8, \"num_hidden_layers\": 2, \"head_dim\": 16}}", "dup2.json", &c) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "dup2.json: key \"decoder.head_dim\" appears more than once"), "%s", t5g_last_error());
  CHECK(config_parse("{\"model_type\": \"gemma2\", \"t5gemma_c\": {\"encoder_causal\": 0}, \"x\": [{\"a\": 1}, {\"b\": 1, \"b\": 2}]}", "dup3.json", &c) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "dup3.json: key \"x[1].b\" appears more than once"), "%s", t5g_last_error());
  /* equal keys in different objects are not duplicates */
  CHECK_MSG(config_parse("{\"model_type\": \"t5gemma\", \"encoder\": {\"head_dim\": 8}, \"decoder\": {\"head_dim\": 8}}", "nodup.json", &c) == 0,
            "%s", t5g_last_error());
  /* not JSON, not an object, no model_type */
  CHECK(config_parse("{\"model_type\": \"gemma2\",", "trunc.json", &c) != 0 && strstr(t5g_last_error(), "trunc.json: not valid JSON"));
  CHECK(config_parse("[1, 2]", "arr.json", &c) != 0 && strstr(t5g_last_error(), "arr.json"));
  CHECK(config_parse("{}", "empty.json", &c) != 0 && strstr(t5g_last_error(), "model_type"));
  /* config_validate on a hand-built config */
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  c.enc.vocab_size = 600;
  CHECK(config_validate(&c, "hand") != 0 && strstr(t5g_last_error(), "encoder.vocab_size (600) differs from decoder.vocab_size (512)"));
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  c.dec.num_hidden_layers = T5G_MAX_LAYERS + 1;
  CHECK(config_validate(&c, "hand") != 0 && strstr(t5g_last_error(), "decoder.num_hidden_layers"));
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  c.enc.dropout_rate = 0.1f;
  CHECK(config_validate(&c, "hand") != 0 && strstr(t5g_last_error(), "dropout_rate"));
  CHECK(config_resolve("tiny-t5gemma", &c) == 0);
  snprintf(c.dec.hidden_activation, sizeof c.dec.hidden_activation, "gelu");
  CHECK(config_validate(&c, "hand") != 0 && strstr(t5g_last_error(), "decoder.hidden_activation"));
  c.kind = 0;
  CHECK(config_validate(&c, "hand") != 0 && strstr(t5g_last_error(), "model_type"));
}

/* ---- save / load round trip ------------------------------------------------------------------ */

static int stack_equal(const StackConfig *a, const StackConfig *b, char *why, size_t n) {
#define EQ(f) if (a->f != b->f) { snprintf(why, n, #f ": %g vs %g", (double)a->f, (double)b->f); return 0; }
  EQ(vocab_size) EQ(hidden_size) EQ(intermediate_size) EQ(num_hidden_layers) EQ(num_attention_heads)
  EQ(num_key_value_heads) EQ(head_dim) EQ(query_pre_attn_scalar) EQ(sliding_window) EQ(max_position_embeddings)
  EQ(rope_theta) EQ(rms_norm_eps) EQ(attn_logit_softcapping) EQ(final_logit_softcapping)
  EQ(cross_attention_hidden_size) EQ(dropout_rate) EQ(attention_dropout) EQ(initializer_range)
#undef EQ
  if (strcmp(a->hidden_activation, b->hidden_activation) != 0) { snprintf(why, n, "hidden_activation"); return 0; }
  for (int i = 0; i < a->num_hidden_layers; i++)
    if (a->layer_sliding[i] != b->layer_sliding[i]) { snprintf(why, n, "layer_sliding[%d]", i); return 0; }
  return 1;
}

static int config_equal(const ModelConfig *a, const ModelConfig *b, char *why, size_t n) {
  if (a->kind != b->kind || a->pad_token_id != b->pad_token_id || a->eos_token_id != b->eos_token_id ||
      a->bos_token_id != b->bos_token_id || a->tie_word_embeddings != b->tie_word_embeddings ||
      a->encoder_causal != b->encoder_causal || a->embed_scale_bf16 != b->embed_scale_bf16) { snprintf(why, n, "top-level fields"); return 0; }
  if (!stack_equal(&a->dec, &b->dec, why, n)) return 0;
  if (a->kind == MODEL_T5GEMMA && !stack_equal(&a->enc, &b->enc, why, n)) return 0;
  return 1;
}

TEST(save_load_round_trip) {
  char dir[] = "/tmp/t5g-test-config-XXXXXX";
  CHECK(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof path, "%s/config.json", dir);
  char why[256];
  for (int i = 0; i < NPRESETS; i++) {
    ModelConfig a, b;
    CHECK(config_resolve(presets[i], &a) == 0);
    CHECK_MSG(config_save(&a, path) == 0, "%s", t5g_last_error());
    CHECK_MSG(config_load(dir, &b) == 0, "%s: %s", presets[i], t5g_last_error());
    CHECK_MSG(config_equal(&a, &b, why, sizeof why), "%s: %s", presets[i], why);
  }
  /* non-default values of every kind survive */
  ModelConfig a, b;
  CHECK(config_resolve("tiny-t5gemma-unequal", &a) == 0);
  a.encoder_causal = 1; a.embed_scale_bf16 = 1;
  a.enc.dropout_rate = a.dec.dropout_rate = 0.1f;
  a.enc.attention_dropout = a.dec.attention_dropout = 0.05f;
  a.enc.layer_sliding[3] = 1; a.dec.layer_sliding[0] = 0;
  a.dec.final_logit_softcapping = 0; a.enc.attn_logit_softcapping = 20.5f;
  a.enc.rms_norm_eps = 3e-7f; a.dec.rope_theta = 12345.678f; a.enc.query_pre_attn_scalar = 12.25f;
  a.enc.initializer_range = 0.013f;
  a.bos_token_id = 9; a.eos_token_id = 8; a.pad_token_id = 7;
  CHECK(config_save(&a, path) == 0);
  CHECK_MSG(config_load(path, &b) == 0, "%s", t5g_last_error());
  CHECK_MSG(config_equal(&a, &b, why, sizeof why), "custom t5gemma: %s", why);
  CHECK(config_resolve("tiny-gemma2", &a) == 0);
  a.dec.dropout_rate = 0.2f; a.dec.sliding_window = 3; a.embed_scale_bf16 = 1;
  CHECK(config_save(&a, path) == 0);
  CHECK(config_load(path, &b) == 0);
  CHECK_MSG(config_equal(&a, &b, why, sizeof why), "custom gemma2: %s", why);
  /* the file is what transformers expects */
  char *text = t5g_read_file(path, NULL);
  CHECK(text);
  cJSON *j = cJSON_Parse(text);
  CHECK(j);
  CHECK_STR(cJSON_GetObjectItem(j, "model_type")->valuestring, "gemma2");
  CHECK_STR(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring, "Gemma2ForCausalLM");
  CHECK_STR(cJSON_GetObjectItem(j, "cache_implementation")->valuestring, "hybrid");
  CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "layer_types")), 4);
  CHECK(strstr(text, "\"final_logit_softcapping\":\t30.0"));   /* a float, not 30 */
  CHECK(strstr(text, "\"query_pre_attn_scalar\":\t16,"));      /* an int */
  cJSON_Delete(j); free(text);
  /* a refused config is not written */
  a.dec.head_dim = 5;
  unlink(path);
  CHECK(config_save(&a, path) != 0 && !t5g_file_exists(path));
  char *tt = config_to_json_dtype(&b, "bfloat16");
  CHECK(strstr(tt, "\"torch_dtype\":\t\"bfloat16\""));
  free(tt);
  rmdir(dir);
}

TEST(t5gemma_json_structure) {
  ModelConfig a;
  CHECK(config_resolve("tiny-t5gemma-unequal", &a) == 0);
  char *s = config_to_json(&a);
  cJSON *j = cJSON_Parse(s);
  free(s);
  CHECK(j);
  CHECK_STR(cJSON_GetObjectItem(j, "model_type")->valuestring, "t5gemma");
  CHECK_STR(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring, "T5GemmaForConditionalGeneration");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "is_encoder_decoder")));
  cJSON *e = cJSON_GetObjectItem(j, "encoder"), *d = cJSON_GetObjectItem(j, "decoder");
  CHECK(e && d);
  CHECK_STR(cJSON_GetObjectItem(e, "model_type")->valuestring, "t5_gemma_module");
  CHECK_STR(cJSON_GetObjectItem(d, "model_type")->valuestring, "t5_gemma_module");
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(e, "is_decoder")) && cJSON_IsTrue(cJSON_GetObjectItem(d, "is_decoder")));
  CHECK_EQ_INT(cJSON_GetObjectItem(d, "cross_attention_hidden_size")->valueint, 96);
  CHECK(!cJSON_GetObjectItem(e, "cross_attention_hidden_size"));
  CHECK_EQ_INT(cJSON_GetObjectItem(e, "hidden_size")->valueint, 96);
  CHECK_EQ_INT(cJSON_GetObjectItem(j, "vocab_size")->valueint, 512);
  CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "t5gemma_c"), "encoder_causal")->valueint, 0);
  cJSON_Delete(j);
}

TEST(resolve) {
  ModelConfig c;
  /* a directory holding config.json, a file, a preset */
  CHECK(config_resolve("configs/models/tiny-gemma2.json", &c) == 0 && c.kind == MODEL_GEMMA2);
  CHECK_STR(c.name, "tiny-gemma2");
  char dir[] = "/tmp/t5g-test-resolve-XXXXXX";
  CHECK(mkdtemp(dir));
  CHECK(config_resolve(dir, &c) != 0 && strstr(t5g_last_error(), "without config.json"));
  char path[128]; snprintf(path, sizeof path, "%s/config.json", dir);
  ModelConfig t;
  CHECK(config_resolve("tiny-t5gemma", &t) == 0);
  CHECK(config_save(&t, path) == 0);
  CHECK(config_resolve(dir, &c) == 0 && c.kind == MODEL_T5GEMMA && c.enc.hidden_size == 64);
  unlink(path); rmdir(dir);
  CHECK(config_resolve("no-such-preset", &c) != 0);
  CHECK_MSG(strstr(t5g_last_error(), "no-such-preset") && strstr(t5g_last_error(), "tiny-gemma2"), "%s", t5g_last_error());
  CHECK(config_resolve("/nonexistent/dir/config.json", &c) != 0 && strstr(t5g_last_error(), "/nonexistent/dir/config.json"));
  /* found next to the executable (or in its parent) when the current directory has no
   * configs/: checked when this test program sits where a preset directory is reachable */
  char cwd[4096];
  CHECK(getcwd(cwd, sizeof cwd));
  char exe[4096]; ssize_t L = readlink("/proc/self/exe", exe, sizeof exe - 1);
  CHECK(L > 0); exe[L] = 0;
  *strrchr(exe, '/') = 0;
  char p1[4200], p2[4200];
  snprintf(p1, sizeof p1, "%s/configs/models/tiny-gemma2.json", exe);
  *strrchr(exe, '/') = 0;
  snprintf(p2, sizeof p2, "%s/configs/models/tiny-gemma2.json", exe);
  if (t5g_file_exists(p1) || t5g_file_exists(p2)) {
    CHECK(chdir("/") == 0);
    int rc = config_resolve("tiny-gemma2", &c);
    CHECK(chdir(cwd) == 0);
    CHECK_MSG(rc == 0, "%s", t5g_last_error());
  }
}

TEST_MAIN()
