/* cli_common.h: helpers shared by `t5gemma generate`, `score` and `eval` (eval/cli_*.c):
 * option values, loading the model and the tokenizer, the Gemma chat template, and output of
 * token strings as JSON. */
#ifndef T5G_CLI_COMMON_H
#define T5G_CLI_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include "model/model.h"

typedef struct Tokenizer Tokenizer;
typedef struct cJSON cJSON;

/* Value of option argv[*i] (advances *i); "--opt=value" is accepted too (then *i is not moved
 * and the value follows '='). NULL with t5g_error when the value is missing. */
const char *cli_value(int argc, char **argv, int *i);
/* Whether argv[i] is option `name`, as "--name" or "--name=...". */
int cli_is(const char *arg, const char *name);
/* Integer / float option values with range checks; -1 with t5g_error naming the option. */
int cli_int(const char *opt, const char *s, long lo, long hi, int *out);
int cli_u64(const char *opt, const char *s, uint64_t *out);
int cli_float(const char *opt, const char *s, double lo, double hi, float *out);

/* Load the tokenizer from `path`, or when NULL from the model directory (tokenizer.json or
 * tokenizer.model there). required = 0: a missing tokenizer is not an error (returns NULL
 * without message). Checks that its vocabulary fits the model's (ids < vocab_size). */
Tokenizer *cli_load_tokenizer(const char *path, const char *model_dir, const Model *m, int required, int *failed);

/* Gemma 2 chat template (HF chat_template; spec 4.6):
 *   <bos> for each message: <start_of_turn> ROLE "\n" trim(CONTENT) <end_of_turn> "\n"
 *   then the generation prompt <start_of_turn> "model\n".
 * messages: a JSON array of {"role": "user"|"model"|"assistant"|"system", "content": str};
 * "assistant" is written "model"; a leading "system" message is merged into the first user turn
 * as "SYSTEM\n\nUSER" (Gemma 2's template has no system role); roles must alternate user/model
 * starting with user and end with a user turn. Specials are inserted by id; text is encoded
 * with special-token parsing off, so message text cannot inject control tokens. *ids is
 * malloc'ed. -1 with t5g_error describing the problem (prefix it with the file:line). */
int cli_chat_encode(const Tokenizer *tok, const cJSON *messages, int32_t **ids, int *n);
/* A single user turn: the same template around `text`. */
int cli_chat_encode_text(const Tokenizer *tok, const char *text, int32_t **ids, int *n);

/* Read a JSON array of integer ids into *ids (malloc'ed); -1 with a message in err. */
int cli_json_ids(const cJSON *a, const char *field, int32_t **ids, int *n, char *err, size_t errn);

/* Print a number as JSON with printf precision `prec` (%.*g): a NaN or infinity, which JSON cannot
 * hold, is written null and counted in *nonfinite (when not NULL). */
void cli_json_num(FILE *f, int prec, double v, int64_t *nonfinite);

/* Print a string as a JSON string literal (with quotes). */
void cli_json_string(FILE *f, const char *s);

#endif
