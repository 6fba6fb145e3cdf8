#include "model/batch.h"
#include "model/util.h"
#include <stdlib.h>
#include <string.h>

void batch_alloc(Batch *b, int B, int Te, int Td, int packed) {
  memset(b, 0, sizeof *b);
  b->B = B; b->Te = Te; b->Td = Td;
  if (Te > 0) {
    b->enc_ids = t5g_calloc((size_t)B * Te, sizeof(int32_t));
    b->enc_mask = t5g_calloc((size_t)B * Te, 1);
    b->enc_pos = t5g_calloc((size_t)B * Te, sizeof(int32_t));
    if (packed) b->enc_seg = t5g_calloc((size_t)B * Te, sizeof(int32_t));
  }
  b->dec_ids = t5g_calloc((size_t)B * Td, sizeof(int32_t));
  b->dec_mask = t5g_calloc((size_t)B * Td, 1);
  b->dec_pos = t5g_calloc((size_t)B * Td, sizeof(int32_t));
  b->labels = t5g_calloc((size_t)B * Td, sizeof(int32_t));
  if (packed) b->dec_seg = t5g_calloc((size_t)B * Td, sizeof(int32_t));
}

void batch_free(Batch *b) {
  free(b->enc_ids); free(b->enc_mask); free(b->enc_pos); free(b->enc_seg);
  free(b->dec_ids); free(b->dec_mask); free(b->dec_pos); free(b->dec_seg); free(b->labels);
  memset(b, 0, sizeof *b);
}

int64_t batch_input_tokens(const Batch *b) {
  int64_t n = 0;
  for (int64_t i = 0; i < (int64_t)b->B * b->Te; i++) n += b->enc_mask[i];
  for (int64_t i = 0; i < (int64_t)b->B * b->Td; i++) n += b->dec_mask[i];
  return n;
}

void batch_count_targets(Batch *b) {
  int64_t n = 0;
  for (int64_t i = 0; i < (int64_t)b->B * b->Td; i++) n += b->labels[i] != -100;
  b->n_targets = n;
}
