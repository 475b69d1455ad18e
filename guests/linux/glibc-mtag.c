/*
 * glibc-mtag: does (static) glibc's malloc tag the heap when GLIBC_TUNABLES asks?
 *
 * Run as  GLIBC_TUNABLES=glibc.mem.tagging=N glibc-mtag
 * or without GLIBC_TUNABLES, when it runs itself again (execv of argv[0]) with N = 0, 1
 * and 3 in turn: glibc reads its tunables once, at start-up.
 * It never calls prctl itself: whatever tag checking there is, glibc turned on. The
 * tunable is a bit mask (glibc's manual, "Memory Related Tunables"): bit 0 tags each
 * allocation, bit 1 asks for precise (synchronous) faults, bit 2 for the mode the
 * system prefers. glibc reads it in ptmalloc_init (malloc/arena.c) and, on arm64,
 * turns on tagged addresses and tag checks with prctl in
 * sysdeps/unix/sysv/linux/aarch64/cpu-features.c.
 *
 * It prints one line for the heap's first pointer (does it carry a tag?) and one for
 * each of a use-after-free and an overflow, each committed in a child:
 *   === TAGVISOR-GLIBC-MTAG tunables=<GLIBC_TUNABLES> pointer=<hex> tagged=<0|1>
 *   === TAGVISOR-GLIBC-MTAG tunables=<GLIBC_TUNABLES> BUG kind=<uaf|overflow> signal=<n> code=<si_code>
 * (signal 0: the bug went unnoticed; SEGV_MTESERR 9 is a precise fault, SEGV_MTEAERR 8
 * an asynchronous one).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_report.h"

#define PREFIX "=== TAGVISOR-GLIBC-MTAG "

static const char *tunables = "";

/* The bugs are on purpose: the compiler must not see (and refuse) them. */
static volatile char *hide(void *p)
{
	__asm__ volatile("" : "+r"(p));
	return p;
}

static void use_after_free(void)
{
	void *p = malloc(32);
	volatile char *stale = hide(p);
	free(p);
	stale[0] = 1;
}

static void overflow(void)
{
	volatile char *p = hide(malloc(32));
	void *q = malloc(32);
	p[48] = 1; /* past p's 32 bytes and its chunk's header, into the next chunk */
	free(q);
}

static void run(const char *kind, void (*bug)(void))
{
	int fds[2], got[2] = {0, 0};
	if (pipe(fds))
		return;
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		report_faults_to(fds[1]);
		bug();
		usleep(1000); /* an asynchronous fault is taken at the next kernel entry */
		int none[2] = {0, 0};
		if (write(fds[1], none, sizeof none) != (ssize_t)sizeof none)
			_exit(3);
		_exit(1);
	}
	close(fds[1]);
	ssize_t n = pid < 0 ? 0 : read(fds[0], got, sizeof got);
	close(fds[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	if (n != (ssize_t)sizeof got)
		got[0] = got[1] = 0;
	printf(PREFIX "tunables=%s BUG kind=%s signal=%d code=%d\n", tunables, kind, got[0],
	       got[1]);
}

/* Each setting in a process of its own: the tunable is read once, at start-up. */
static int each_setting(char **argv)
{
	static const char *const settings[] = {"0", "1", "3"};
	for (unsigned i = 0; i < sizeof settings / sizeof settings[0]; i++) {
		char value[64];
		snprintf(value, sizeof value, "glibc.mem.tagging=%s", settings[i]);
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			setenv("GLIBC_TUNABLES", value, 1);
			execv(argv[0], argv);
			printf(PREFIX "tunables=%s exec failed: %s\n", value, strerror(errno));
			fflush(stdout);
			_exit(1);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	(void)argc;
	setvbuf(stdout, NULL, _IOLBF, 0);
	tunables = getenv("GLIBC_TUNABLES");
	if (tunables == NULL)
		return each_setting(argv);
	void *p = malloc(32);
	uintptr_t bits = (uintptr_t)p;
	printf(PREFIX "tunables=%s pointer=%#lx tagged=%d\n", tunables, (unsigned long)bits,
	       (bits >> 56) != 0);
	free(p);
	run("uaf", use_after_free);
	run("overflow", overflow);
	return 0;
}
