/* source.h: a stream of documents (token-id arrays), the interface between the shard reader
 * (data/shards.h) and the objectives (data/objectives.h). Tests may implement it over arrays. */
#ifndef T5G_SOURCE_H
#define T5G_SOURCE_H

#include <stdint.h>

typedef struct DocSource {
  void *ctx;
  /* The next document: *ids points to *n tokens, valid until the next call. Returns 1 on
   * success, 0 when the source is exhausted (a finite source; the shard reader instead wraps to
   * the next epoch), -1 on error (t5g_error set). */
  int (*next)(void *ctx, const int32_t **ids, int64_t *n);
} DocSource;

#endif
