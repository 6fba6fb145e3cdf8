/* util.h: error reporting, checked allocation and file helpers shared by every module.
 *
 * Conventions used across t5gemma:
 *  - Functions that can fail on bad input return 0 on success and -1 on failure, after writing a
 *    message with t5g_error() that names the file, the field, what was expected and what was
 *    found. Commands print the message and exit non-zero.
 *  - Internal invariants (a programming error, not bad input) use T5G_ASSERT, which aborts with
 *    file and line.
 *  - Sizes and offsets are int64_t / size_t everywhere (files and tensors over 2 GiB are normal:
 *    the Gemma 2 embedding alone is 256000 x 2304 floats = 2.2 GiB).
 */
#ifndef T5G_UTIL_H
#define T5G_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdarg.h>

#define T5G_ASSERT(c) do { if (!(c)) t5g_fatal("internal error: %s:%d: assertion `%s` failed", __FILE__, __LINE__, #c); } while (0)

/* Record an error message (printf-style). The last message is kept in a thread-local buffer and
 * returned by t5g_last_error(); it is also what t5g_die_last() prints. Returns -1 so that
 * `return t5g_error(...)` reads naturally. */
int t5g_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *t5g_last_error(void);
/* Print "t5gemma: <msg>" to stderr and exit(1). */
void t5g_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Print the last recorded error and exit(1). */
void t5g_die_last(void) __attribute__((noreturn));

/* Checked allocation: abort with the requested size on failure. t5g_alloc_aligned gives 64-byte
 * aligned memory (free with free()). */
void *t5g_malloc(size_t n);
void *t5g_calloc(size_t count, size_t size);
void *t5g_realloc(void *p, size_t n);
void *t5g_alloc_aligned(size_t n);
char *t5g_strdup(const char *s);

/* Whole-file read into a NUL-terminated malloc'ed buffer; *len gets the size (may be NULL).
 * Returns NULL after t5g_error() when the file cannot be read. */
char *t5g_read_file(const char *path, size_t *len);

/* Atomic file replacement: writes go to "<path>.tmp.<pid>"; t5g_commit_file() fsyncs and renames
 * it over <path>; t5g_abort_file() removes the temporary. A crash or a signal never leaves a
 * half-written file under the final name. */
typedef struct { FILE *f; char *path; char *tmp; } T5gOutFile;
int  t5g_open_out(T5gOutFile *o, const char *path);
int  t5g_commit_file(T5gOutFile *o);
void t5g_abort_file(T5gOutFile *o);
/* Temporary name for a path that is written by another library (e.g. HDF5): same scheme. The
 * name is registered (t5g_tmp_register) until t5g_rename_durable() moves it onto its final name,
 * or the caller removes it with t5g_tmp_unlink() (or forgets it with t5g_tmp_forget()). */
char *t5g_tmp_name(const char *path);
/* fsync a file by name and rename it onto final; returns 0 or -1 with t5g_error(). A registered
 * tmp is forgotten once renamed. */
int t5g_rename_durable(const char *tmp, const char *final);

/* Temporaries on disk while they are written: a fixed-size registry (64 paths, no allocation) so
 * that a SIGINT / SIGTERM handler can remove them. t5g_open_out and t5g_tmp_name register,
 * t5g_commit_file / t5g_abort_file / t5g_rename_durable forget. Thread-safe. */
void t5g_tmp_register(const char *tmp);
void t5g_tmp_forget(const char *tmp);
void t5g_tmp_unlink(const char *tmp);          /* unlink() and forget */
/* Async-signal-safe: unlink every registered temporary (rmdir for a directory), newest first,
 * and write one line to stderr naming them (sig: the signal, for the message; 0 = none). Returns
 * how many were removed. */
int  t5g_tmp_remove_all(int sig);
/* Install SIGINT / SIGTERM handlers that call t5g_tmp_remove_all() and then let the signal end the
 * process (exit status 128 + signal, e.g. 130 for Ctrl-C). main() installs it for every command;
 * train replaces it with train/signals.h (whose second signal does the same). */
void t5g_tmp_cleanup_on_signals(void);
/* Remove, in directory dir, the temporaries "<name>.tmp.<pid>" left by processes that no longer
 * exist (a writer killed with SIGKILL or a power cut), for the names <name> that match(name, len,
 * ud) accepts (name is not NUL-terminated at len). say: print one line per file removed. Returns
 * how many were removed. */
int  t5g_remove_dead_tmps(const char *dir, int (*match)(const char *name, size_t len, const void *ud), const void *ud,
                          int say);
/* The same for one output file: "<path>.tmp.<pid>", saying what it removes. */
int  t5g_remove_stale_tmps(const char *path);

int  t5g_mkdir_p(const char *dir);
/* Copy a file (to a temporary name, then renamed). 0 or -1 with t5g_error(). */
int  t5g_copy_file(const char *src, const char *dst);
int  t5g_file_exists(const char *path);
char *t5g_path_join(const char *a, const char *b); /* malloc'ed "a/b" */

/* Monotonic wall-clock seconds. */
double t5g_now(void);
/* CPU seconds used so far by the whole process, all threads (CLOCK_PROCESS_CPUTIME_ID: the
 * scheduler's exact run times, not tick samples). */
double t5g_cpu_now(void);
/* Peak resident set size of this process in bytes (from getrusage). */
int64_t t5g_peak_rss(void);
/* Current resident set size in bytes (from /proc/self/statm). */
int64_t t5g_current_rss(void);
/* Physical memory available to this process in bytes (MemAvailable from /proc/meminfo). */
int64_t t5g_mem_available(void);

/* 64-bit FNV-1a, for identities (tokenizer hash) and checksums of small metadata. */
uint64_t t5g_fnv1a64(const void *data, size_t n, uint64_t seed);
#define T5G_FNV_SEED 0xcbf29ce484222325ULL

/* Duplicate keys in parsed JSON. cJSON keeps every member of an object, and its look-ups return
 * the first of two equal keys, while Python's json (so Hugging Face) keeps the last: a file with
 * a key twice means different things to the two. Walks the tree under root (objects inside
 * objects and arrays, any depth) and returns 1 at the first object holding a key twice (keys
 * compared case-sensitively, as both readers do), writing the key's path into buf ("hidden_size",
 * "decoder.hidden_size", "list[2].name"; truncated to n); 0 when every key is unique. */
struct cJSON;
int t5g_json_duplicate_key(const struct cJSON *root, char *buf, size_t n);

/* Human-readable byte count ("1.23 GiB") into buf. */
const char *t5g_fmt_bytes(double bytes, char *buf, size_t n);
/* Human-readable count of things (parameters, tokens) into buf with three significant digits and
 * a decimal unit: "950", "12.3K", "4.33M", "2.61B", "1.20T" (K = 10^3, M = 10^6, B = 10^9,
 * T = 10^12, the units model sizes are quoted in). */
const char *t5g_fmt_count(double count, char *buf, size_t n);

#endif
