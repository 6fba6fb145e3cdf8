/* signals.h: clean stop on SIGINT / SIGTERM.
 *
 * t5g_signals_install() makes the first SIGINT or SIGTERM only set a flag (volatile
 * sig_atomic_t); the training loop polls t5g_stop_requested() between steps, saves a checkpoint
 * and exits cleanly. A second signal of either kind while the flag is set restores the default
 * action and re-raises, so a second Ctrl-C (or a second `kill`) ends the process at once (exit
 * status 128 + signal), after saying so on stderr and removing the temporaries being written
 * (a checkpoint's ckpt-*.h5.tmp.<pid>: t5g_tmp_remove_all in model/util.h).
 * Under MPI every rank must agree before stopping (e.g. an allreduce-max of the flag each step),
 * because the signal may reach only some ranks; that is the training loop's job.
 */
#ifndef T5G_SIGNALS_H
#define T5G_SIGNALS_H

/* Install the handlers (sigaction, SA_RESTART so interrupted reads and writes are retried). */
void t5g_signals_install(void);
/* The signal number that asked to stop (SIGINT or SIGTERM), or 0. Async-signal-safe to read. */
int  t5g_stop_requested(void);
/* Forget a stop request (the handlers stay installed). */
void t5g_signals_clear(void);

#endif
