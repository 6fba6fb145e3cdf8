/* check.h: the tests' tiny framework (header-only).
 *
 * A test program defines cases with TEST(name) { ... } and ends with TEST_MAIN(). Each case
 * prints "PASS name" or "FAIL name: reason"; the runner (tests/run.sh) counts those lines.
 * CHECK* macros record a failure with file and line and return from the case.
 *
 *   TEST(rmsnorm_grad) { CHECK(x == 1); CHECK_NEAR(a, b, 1e-6); CHECK_CLOSE_REL(a, b, 1e-4, 1e-6); }
 *   TEST_MAIN()
 */
#ifndef T5G_CHECK_H
#define T5G_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/runtime.h"

typedef void (*TestFn)(int *failed, char *msg, size_t msglen);
typedef struct { const char *name; TestFn fn; } TestCase;

#define T5G_MAX_TESTS 512
static TestCase t5g_tests[T5G_MAX_TESTS];
static int t5g_n_tests;

#define TEST(name)                                                                       \
  static void test_##name(int *t5g_failed, char *t5g_msg, size_t t5g_msglen);           \
  __attribute__((constructor)) static void register_##name(void) {                      \
    if (t5g_n_tests < T5G_MAX_TESTS) t5g_tests[t5g_n_tests++] = (TestCase){#name, test_##name}; \
  }                                                                                     \
  static void test_##name(int *t5g_failed, char *t5g_msg, size_t t5g_msglen)

#define FAILF(...) do { *t5g_failed = 1; int _o = snprintf(t5g_msg, t5g_msglen, "%s:%d: ", __FILE__, __LINE__); \
    snprintf(t5g_msg + _o, t5g_msglen - _o, __VA_ARGS__); return; } while (0)
#define CHECK(c) do { if (!(c)) FAILF("CHECK(%s)", #c); } while (0)
#define CHECK_MSG(c, ...) do { if (!(c)) FAILF(__VA_ARGS__); } while (0)
#define CHECK_EQ_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); \
    if (_a != _b) FAILF("%s = %lld, expected %s = %lld", #a, _a, #b, _b); } while (0)
#define CHECK_NEAR(a, b, tol) do { double _a = (a), _b = (b); \
    if (!(fabs(_a - _b) <= (tol))) FAILF("%s = %.9g, %s = %.9g, |diff| %.3g > %.3g", #a, _a, #b, _b, fabs(_a - _b), (double)(tol)); } while (0)
/* |a-b| <= atol + rtol*|b| */
#define CHECK_CLOSE_REL(a, b, rtol, atol) do { double _a = (a), _b = (b); \
    if (!(fabs(_a - _b) <= (atol) + (rtol) * fabs(_b))) FAILF("%s = %.9g, %s = %.9g, rel diff %.3g", #a, _a, #b, _b, fabs(_a - _b) / (fabs(_b) + 1e-30)); } while (0)
#define CHECK_STR(a, b) do { const char *_a = (a), *_b = (b); \
    if (!_a || !_b || strcmp(_a, _b) != 0) FAILF("%s = \"%s\", expected \"%s\"", #a, _a ? _a : "(null)", _b ? _b : "(null)"); } while (0)

/* Run all cases, or only those whose names contain argv[1]. Exit status: number of failures. */
#define TEST_MAIN()                                                                       \
  int main(int argc, char **argv) {                                                      \
    t5g_runtime_init(&argc, &argv);                                                      \
    int nfail = 0;                                                                       \
    for (int i = 0; i < t5g_n_tests; i++) {                                              \
      if (argc > 1 && !strstr(t5g_tests[i].name, argv[1])) continue;                     \
      int failed = 0; char msg[2048] = "";                                               \
      t5g_tests[i].fn(&failed, msg, sizeof msg);                                         \
      if (failed) { printf("FAIL %s: %s\n", t5g_tests[i].name, msg); nfail++; }          \
      else printf("PASS %s\n", t5g_tests[i].name);                                       \
      fflush(stdout);                                                                    \
    }                                                                                    \
    return nfail > 0;                                                                    \
  }

#endif
