/*
 * mte-workload: the Linux guest's own MTE work (docs/linux-guests.md, "The workload").
 *
 * Usage: mte-workload [MiB]   (default 64; stdin and stdout are the console)
 *
 * It turns on tagged addresses with synchronous tag checks (prctl), maps MiB of
 * PROT_MTE memory (without MTE: plain memory, untagged, READY says mte=0), gives every 16-byte granule data and a random tag (IRG, then STGP
 * stores the tag and both data words at once), keeps its own record of each granule
 * (tag and generation: the data follow from the granule's index and generation) and
 * prints READY with a digest of all data and tags (the tags read back with LDG).
 * Then it rewrites a moving window of granules (new data, new tag) so that a live
 * migration sees dirty pages, and reads commands, one a line, from stdin:
 *
 *   verify  check every granule against the records (tag by LDG, data through the
 *           recorded tag, which the hardware checks too); print VERIFIED
 *   pause   stop rewriting (PAUSED); resume: start again (RESUMED)
 *   bugs    a use-after-free and an overflow, each in a child: SIGSEGV with
 *           SEGV_MTESERR is the pass (BUG lines, then BUGS caught=k/2)
 *   exit    EXIT, status 0 (also at the end of stdin)
 *
 * Every protocol line starts with "=== TAGVISOR-WORKLOAD " and is one line; the host
 * side parses them with tagvisor.testbed.workload. TICK <uptime> comes every 5 s.
 *
 * The prctl and PROT_MTE values are Linux's (include/uapi/linux/prctl.h,
 * arch/arm64/include/uapi/asm/mman.h), spelled out because libc6-dev may predate them;
 * Documentation/arch/arm64/memory-tagging-extension.rst describes their use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fault_report.h"

#define PREFIX "=== TAGVISOR-WORKLOAD "
#define PROT_MTE_ 0x20
#define PR_SET_TAGGED_ADDR_CTRL_ 55
#define PR_TAGGED_ADDR_ENABLE_ (1UL << 0)
#define PR_MTE_TCF_SYNC_ (1UL << 1)
#define PR_MTE_TAG_SHIFT_ 3
#define SEGV_MTESERR_ 9
#define GRANULE 16
/* Tags IRG may choose: 1 to 15, so no granule keeps tag 0, which untagged pointers carry. */
#define TAG_INCLUDE 0xfffeUL
#define DEFAULT_MIB 64
#define MAX_MIB 4096
/* The rewriting: WINDOW granules (64 KiB) every STEP_MS, 3.2 MiB/s of dirty memory. */
#define WINDOW 4096
#define STEP_MS 20
#define TICK_SECONDS 5

static uint8_t *region;   /* untagged base of the PROT_MTE mapping */
static uint8_t *records;  /* per granule: tag (bits 0-3), generation (bits 4-7) */
static size_t granules;
static size_t cursor;     /* the next granule the rewriting takes */

static inline uint8_t *irg(uint8_t *p, uint64_t exclude)
{
	__asm__ volatile("irg %0, %0, %1" : "+r"(p) : "r"(exclude));
	return p;
}

static inline uint8_t *ldg(uint8_t *p)
{
	__asm__ volatile("ldg %0, [%0]" : "+r"(p) : : "memory");
	return p;
}

static inline void stgp(uint8_t *p, uint64_t a, uint64_t b)
{
	__asm__ volatile("stgp %1, %2, [%0]" : : "r"(p), "r"(a), "r"(b) : "memory");
}

static inline void stg(uint8_t *p)
{
	__asm__ volatile("stg %0, [%0]" : : "r"(p) : "memory");
}

static inline unsigned tag_of(const void *p)
{
	return (unsigned)((uintptr_t)p >> 56) & 0xf;
}

static inline uint8_t *with_tag(uint8_t *p, unsigned tag)
{
	return (uint8_t *)(((uintptr_t)p & ~(0xfUL << 56)) | ((uintptr_t)tag << 56));
}

/* splitmix64's finaliser: the data of granule i in generation g. */
static inline uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static inline uint64_t word(size_t i, unsigned gen, unsigned half)
{
	return mix(((uint64_t)i << 5) | ((uint64_t)gen << 1) | half);
}

static inline uint64_t fold(uint64_t h, uint64_t x)
{
	return (h ^ x) * 0x100000001b3ULL;
}

static void line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void line(const char *fmt, ...)
{
	va_list args;
	fputs(PREFIX, stdout);
	va_start(args, fmt);
	vprintf(fmt, args);
	va_end(args);
	fputc('\n', stdout);
	fflush(stdout);
}

static double uptime(void)
{
	struct timespec now;
	clock_gettime(CLOCK_BOOTTIME, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* New data and a new tag for granule i, one generation on. */
static void write_granule(size_t i)
{
	unsigned gen = ((unsigned)(records[i] >> 4) + 1) & 0xf;
	uint8_t *p = irg(region + i * GRANULE, 0);
	stgp(p, word(i, gen, 0), word(i, gen, 1));
	records[i] = (uint8_t)(tag_of(p) | gen << 4);
}

/* The digest of every granule's data and tag as memory holds them now, and (with
 * check) how many granules differ from the records. */
static uint64_t scan(int check, size_t *mismatches)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	*mismatches = 0;
	for (size_t i = 0; i < granules; i++) {
		uint8_t *p = ldg(region + i * GRANULE);
		unsigned tag = tag_of(p);
		if (check) {
			unsigned want = records[i] & 0xf, gen = records[i] >> 4;
			if (tag != want) {
				(*mismatches)++;
			} else {
				/* through the recorded tag: a wrong one would fault here */
				volatile uint64_t *q = (volatile uint64_t *)with_tag(p, want);
				if (q[0] != word(i, gen, 0) || q[1] != word(i, gen, 1))
					(*mismatches)++;
			}
		}
		const uint64_t *d = (const uint64_t *)p;
		h = fold(fold(fold(h, d[0]), d[1]), tag);
	}
	return h;
}

static void rewrite_window(void)
{
	for (size_t n = 0; n < WINDOW && n < granules; n++) {
		write_granule(cursor);
		cursor = (cursor + 1) % granules;
	}
}

/* --- the two bugs, each in a child whose SIGSEGV handler reports signo and code --- */


/* A 32-byte object at p (two granules) with its own tag; the returned pointer has it. */
static uint8_t *tag_object(uint8_t *p)
{
	uint8_t *obj = irg(p, 0);
	stg(obj);
	stg(obj + GRANULE);
	return obj;
}

static void use_after_free(uint8_t *page)
{
	uint8_t *obj = tag_object(page);
	/* free: a tagging allocator retags the memory, so stale pointers mismatch */
	uint8_t *again = irg(page, 1UL << tag_of(obj));
	stg(again);
	stg(again + GRANULE);
	((volatile uint8_t *)obj)[0] = 1;
}

static void overflow(uint8_t *page)
{
	uint8_t *obj = tag_object(page);
	/* the neighbour's granule has another tag, as an allocator keeps them apart */
	stg(irg(page + 2 * GRANULE, 1UL << tag_of(obj)));
	((volatile uint8_t *)obj)[2 * GRANULE] = 1;
}

static void child(void (*bug)(uint8_t *), int fd)
{
	report_faults_to(fd);
	uint8_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_MTE_,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		_exit(4);
	bug(page);
	int none[2] = {0, 0}; /* no fault: the bug went unnoticed */
	if (write(fd, none, sizeof none) != (ssize_t)sizeof none)
		_exit(3);
	_exit(1);
}

static int run_bug(const char *kind, void (*bug)(uint8_t *))
{
	int fds[2], got[2] = {0, 0};
	if (pipe(fds)) {
		line("ERROR pipe: %s", strerror(errno));
		return 0;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		child(bug, fds[1]);
	}
	close(fds[1]);
	if (pid < 0) {
		line("ERROR fork: %s", strerror(errno));
		close(fds[0]);
		return 0;
	}
	ssize_t n = read(fds[0], got, sizeof got);
	close(fds[0]);
	waitpid(pid, NULL, 0);
	if (n != (ssize_t)sizeof got)
		got[0] = got[1] = 0;
	line("BUG kind=%s signal=%d code=%d", kind, got[0], got[1]);
	return got[0] == SIGSEGV && got[1] == SEGV_MTESERR_;
}

/* --- commands ------------------------------------------------------------------- */

static int rewriting = 1;

static int command(const char *text)
{
	size_t mismatches;
	if (!strcmp(text, "verify")) {
		uint64_t h = scan(1, &mismatches);
		line("VERIFIED granules=%zu mismatches=%zu digest=%016llx", granules, mismatches,
		     (unsigned long long)h);
	} else if (!strcmp(text, "pause")) {
		rewriting = 0;
		line("PAUSED");
	} else if (!strcmp(text, "resume")) {
		rewriting = 1;
		line("RESUMED");
	} else if (!strcmp(text, "bugs")) {
		int caught = run_bug("uaf", use_after_free);
		caught += run_bug("overflow", overflow);
		line("BUGS caught=%d/2", caught);
	} else if (!strcmp(text, "exit")) {
		line("EXIT");
		return 1;
	} else if (text[0]) {
		line("ERROR unknown command %.64s", text);
	}
	return 0;
}

/* Runs every whole line in buf; returns 1 once a command asked to exit. */
static int take_lines(char *buf, size_t *used)
{
	char *start = buf, *end;
	while ((end = memchr(start, '\n', *used - (size_t)(start - buf))) != NULL) {
		*end = '\0';
		if (end > start && end[-1] == '\r')
			end[-1] = '\0';
		if (command(start))
			return 1;
		start = end + 1;
	}
	*used -= (size_t)(start - buf);
	memmove(buf, start, *used);
	return 0;
}

static void quiet_console(void)
{
	struct termios mode;
	if (tcgetattr(0, &mode) == 0) { /* a tty: no echo of the host's commands */
		mode.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(0, TCSANOW, &mode);
	}
}

static int serve(void)
{
	char buf[256];
	size_t used = 0;
	double next_tick = uptime() + TICK_SECONDS;
	for (;;) {
		if (rewriting)
			rewrite_window();
		struct pollfd in = {.fd = 0, .events = POLLIN};
		int ready = poll(&in, 1, STEP_MS);
		if (uptime() >= next_tick) {
			line("TICK %.2f", uptime());
			next_tick += TICK_SECONDS;
		}
		if (ready <= 0)
			continue;
		ssize_t n = read(0, buf + used, sizeof buf - 1 - used);
		if (n <= 0)
			return command("exit") - 1;
		used += (size_t)n;
		if (take_lines(buf, &used))
			return 0;
		if (used == sizeof buf - 1) { /* a line longer than any command */
			buf[used] = '\0';
			line("ERROR unknown command %.64s", buf);
			used = 0;
		}
	}
}

/*
 * Without MTE (a VM with mte=off: the prctl's TCF bits are EINVAL, kernel/sys.c via
 * arch/arm64/kernel/mte.c set_mte_ctrl) the same work runs untagged, so that a VMM
 * without tags migrates the same load: IRG gives tag 0 and LDG reads 0 when the
 * hypervisor gives no allocation tag access (HCR_EL2.ATA = 0), so the records hold 0.
 */
static int tagged = 1;

static int setup(long mib)
{
	unsigned long ctrl = PR_TAGGED_ADDR_ENABLE_ | PR_MTE_TCF_SYNC_ |
			     (TAG_INCLUDE << PR_MTE_TAG_SHIFT_);
	if (prctl(PR_SET_TAGGED_ADDR_CTRL_, ctrl, 0, 0, 0)) {
		if (errno != EINVAL) {
			line("ERROR prctl(PR_SET_TAGGED_ADDR_CTRL): %s", strerror(errno));
			return 1;
		}
		tagged = 0;
	}
	size_t bytes = (size_t)mib << 20;
	granules = bytes / GRANULE;
	region = mmap(NULL, bytes, PROT_READ | PROT_WRITE | (tagged ? PROT_MTE_ : 0),
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	records = calloc(granules, 1);
	if (region == MAP_FAILED || records == NULL) {
		line("ERROR cannot map %ld MiB with PROT_MTE: %s", mib, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < granules; i++)
		write_granule(i);
	return 0;
}

int main(int argc, char **argv)
{
	long mib = DEFAULT_MIB;
	char *end;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 2 || (argc == 2 && ((mib = strtol(argv[1], &end, 10)) < 1 || mib > MAX_MIB ||
				       *end != '\0'))) {
		line("ERROR usage: mte-workload [MiB], 1 to %d", MAX_MIB);
		return 2;
	}
	if (setup(mib))
		return 1;
	size_t none;
	uint64_t h = scan(0, &none);
	quiet_console();
	line("READY mib=%ld granules=%zu digest=%016llx mte=%d", mib, granules,
	     (unsigned long long)h, tagged);
	return serve();
}
