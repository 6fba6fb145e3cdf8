/* batch.h: one training/evaluation batch, as the objectives build it and the models consume it.
 *
 * Right padding everywhere (spec 2.2): position ids 0..n-1, pad id 0, masks 1 for real tokens.
 * Decoder-only (causal LM, Gemma 2): Te = 0, the enc_* arrays are NULL, dec_ids are the input
 * tokens and labels the next tokens (-100 where no loss).
 * Encoder-decoder (T5Gemma): enc_ids go to the encoder; dec_ids = BOS + targets shifted right;
 * labels = targets (-100 on padding).
 * Packed sequences carry segment ids (1, 2, ... per document, 0 on padding) and positions that
 * restart at 0 in each segment; attention never crosses segments. Unpacked batches may leave
 * *_seg NULL.
 */
#ifndef T5G_BATCH_H
#define T5G_BATCH_H

#include <stdint.h>

typedef struct Batch {
  int B, Te, Td;
  int32_t *enc_ids;    /* [B, Te] */
  uint8_t *enc_mask;   /* [B, Te] */
  int32_t *enc_pos;    /* [B, Te] */
  int32_t *enc_seg;    /* [B, Te] or NULL */
  int32_t *dec_ids;    /* [B, Td] */
  uint8_t *dec_mask;   /* [B, Td] */
  int32_t *dec_pos;    /* [B, Td] */
  int32_t *dec_seg;    /* [B, Td] or NULL */
  int32_t *labels;     /* [B, Td], -100 = no loss */
  int64_t n_targets;   /* number of labels != -100 */
} Batch;

/* Allocate all arrays (zeroed; segment arrays only when packed != 0). Te may be 0. */
void batch_alloc(Batch *b, int B, int Te, int Td, int packed);
void batch_free(Batch *b);
/* Recount n_targets; fill masks from segment ids or from pad positions when asked. */
void batch_count_targets(Batch *b);
/* Real (unpadded) input tokens: the 1s of enc_mask [B, Te] and dec_mask [B, Td]. */
int64_t batch_input_tokens(const Batch *b);

#endif
