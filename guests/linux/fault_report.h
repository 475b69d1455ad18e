/*
 * A child that commits a bug on purpose reports how it died: its SIGSEGV handler
 * writes {signo, si_code} to the parent's pipe and exits. Shared by mte-workload.c
 * and glibc-mtag.c; si_code is what tells SEGV_MTESERR (9) from SEGV_MTEAERR (8)
 * (include/uapi/asm-generic/siginfo.h).
 */
#ifndef TAGVISOR_FAULT_REPORT_H
#define TAGVISOR_FAULT_REPORT_H

#include <signal.h>
#include <string.h>
#include <unistd.h>

static int report_fd = -1;

static void on_fault(int signo, siginfo_t *info, void *context)
{
	int out[2] = {signo, info->si_code};
	(void)context;
	if (write(report_fd, out, sizeof out) != (ssize_t)sizeof out)
		_exit(3);
	_exit(0);
}

/* In the child: report the next SIGSEGV on fd; a bug that never faults is killed after 30 s. */
static void report_faults_to(int fd)
{
	struct sigaction action;
	memset(&action, 0, sizeof action);
	action.sa_sigaction = on_fault;
	action.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &action, NULL);
	report_fd = fd;
	alarm(30);
}

#endif
