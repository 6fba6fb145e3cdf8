/* signals.c: SIGINT / SIGTERM / SIGUSR1 set a flag polled by the training loop (see signals.h).
 * SIGUSR1 is what mpirun forwards to every rank (`kill -USR1 <mpirun pid>`): the clean way to stop
 * a multi-rank run, since mpirun follows SIGTERM with SIGKILL after a short timeout. */
#include "train/signals.h"
#include "model/util.h"
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop;

static void put_err(const char *s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

static void on_signal(int sig) {
  if (g_stop) {                 /* second request: stop now, removing the checkpoint being written */
    put_err(sig == SIGINT ? "\nt5gemma: second SIGINT: stopping now without saving\n"
                          : sig == SIGTERM ? "\nt5gemma: second SIGTERM: stopping now without saving\n"
                                           : "\nt5gemma: second stop signal: stopping now without saving\n");
    t5g_tmp_remove_all(sig);
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  g_stop = sig;
}

void t5g_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

int t5g_stop_requested(void) { return (int)g_stop; }
void t5g_signals_clear(void) { g_stop = 0; }
