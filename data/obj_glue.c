/* obj_glue.c: the objectives' links to the tokenizer (special ids by name, SFT text encoding) and
 * to the shard reader (resume positions). See data/objectives.h. */
#include "data/objectives.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "model/util.h"

#include <stdio.h>
#include <string.h>

int obj_specials_from_tokenizer(const Tokenizer *t, const char *sentinel_fmt, int32_t *sentinel_ids,
                                int max_sentinels, ObjSpecials *sp) {
  memset(sp, 0, sizeof *sp);
  static const char *req[3] = { "<pad>", "<eos>", "<bos>" };
  int32_t ids[3];
  for (int i = 0; i < 3; i++) {
    ids[i] = tokenizer_piece_to_id(t, req[i]);
    if (ids[i] < 0)
      return t5g_error("%s: the vocabulary has no %s piece (needed by the objectives)",
                       tokenizer_path(t), req[i]);
  }
  sp->pad = ids[0]; sp->eos = ids[1]; sp->bos = ids[2];
  sp->start_of_turn = tokenizer_piece_to_id(t, "<start_of_turn>");
  sp->end_of_turn = tokenizer_piece_to_id(t, "<end_of_turn>");
  if (max_sentinels <= 0) return 0;
  if (max_sentinels > OBJ_MAX_SENTINELS) max_sentinels = OBJ_MAX_SENTINELS;
  const char *fmt = sentinel_fmt ? sentinel_fmt : "<unused%d>";
  const char *pc = strchr(fmt, '%');
  if (!pc || pc[1] != 'd' || strchr(pc + 1, '%'))
    return t5g_error("sentinel name format \"%s\": expected exactly one %%d (e.g. \"<unused%%d>\")", fmt);
  int n = 0;
  for (; n < max_sentinels; n++) {
    char name[128];
    snprintf(name, sizeof name, fmt, n);
    int id = tokenizer_piece_to_id(t, name);
    if (id < 0) break;
    sentinel_ids[n] = id;
  }
  if (n == 0) {
    char name[128];
    snprintf(name, sizeof name, fmt, 0);
    return t5g_error("%s: no sentinel pieces: \"%s\" is not in the vocabulary", tokenizer_path(t), name);
  }
  sp->sentinels = sentinel_ids;
  sp->n_sentinels = n;
  return n;
}

int obj_resolve_modes(Ul2Denoiser *d, int n, const Tokenizer *t) {
  for (int k = 0; k < n; k++) {
    if (!d[k].mode_name[0]) continue;
    int id = tokenizer_piece_to_id(t, d[k].mode_name);
    if (id < 0)
      return t5g_error("UL2 denoiser %d: mode token \"%s\" is not a piece of %s (Gemma has no "
                       "[R]/[S]/[X]; an unused piece such as <unused90> can serve)", k,
                       d[k].mode_name, tokenizer_path(t));
    d[k].mode_token = id;
  }
  return 0;
}

static int tok_encode(void *ctx, const char *text, size_t len, int32_t **ids, int64_t *n) {
  return tokenizer_encode((const Tokenizer *)ctx, text, len, 0, 0, 0, ids, n);
}

SftEncoder sft_encoder_tokenizer(const Tokenizer *t) {
  SftEncoder e = { (void *)t, tok_encode };
  return e;
}

static int shard_tell(void *ctx, int64_t pos[DOCPOS_LEN]) {
  ShardReaderState st;
  shard_reader_get_state((const ShardReader *)ctx, &st);
  memset(pos, 0, sizeof(int64_t) * DOCPOS_LEN);
  pos[0] = (int64_t)st.seed; pos[1] = (int64_t)st.epoch; pos[2] = (int64_t)st.base;
  pos[3] = (int64_t)st.position; pos[4] = st.rank; pos[5] = st.world_size;
  return 0;
}

static int shard_seek(void *ctx, const int64_t pos[DOCPOS_LEN]) {
  ShardReaderState st = { (uint64_t)pos[0], (uint64_t)pos[1], (uint64_t)pos[2], (uint64_t)pos[3],
                          (uint32_t)pos[4], (uint32_t)pos[5] };
  return shard_reader_set_state((ShardReader *)ctx, &st);
}

DocSeeker obj_shard_seeker(ShardReader *r) {
  DocSeeker s = { r, shard_tell, shard_seek };
  return s;
}
