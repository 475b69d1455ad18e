/* Runs in a Linux guest of tagvisor: takes a synchronous tag check fault in user
 * space. Enables MTE for this thread (prctl PR_SET_TAGGED_ADDR_CTRL, sync faults,
 * tags 1-15 for IRG), maps a PROT_MTE page, tags its first granule with IRG + STG,
 * stores through the right tag, then through the tag with bit 56 flipped. Linux's
 * MTE ABI (Documentation/arch/arm64/memory-tagging-extension.rst) answers with
 * SIGSEGV, si_code SEGV_MTESERR (9), si_addr the faulting address; without
 * SA_EXPOSE_TAGBITS the kernel clears its top byte (the tag) first, so the untagged
 * addresses are compared. Every line it prints starts with "MTE-CHECK"; it exits 0
 * only on that fault. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define TAGGED_ADDR_CTRL 55 /* PR_SET_TAGGED_ADDR_CTRL */
#define TAGGED_ADDR_ENABLE (1UL << 0)
#define MTE_TCF_SYNC (1UL << 1)
#define MTE_TAG_SHIFT 3
#define MTE_PROT 0x20 /* PROT_MTE */
#define MTE_SERR 9    /* SEGV_MTESERR */
#define UNTAGGED(p) ((uintptr_t)(p) & ((1UL << 56) - 1))

static volatile uintptr_t expected;

static void on_segv(int sig, siginfo_t *info, void *context)
{
	(void)context;
	int same = UNTAGGED(info->si_addr) == UNTAGGED(expected);

	printf("MTE-CHECK fault signal %d si_code %d at %s address (%p)\n", sig, info->si_code,
	       same ? "the faulting" : "another", info->si_addr);
	fflush(stdout);
	_exit(info->si_code == MTE_SERR && same ? 0 : 1);
}

int main(void)
{
	struct sigaction action = {0};
	unsigned char *page, *tagged, *wrong;

	action.sa_sigaction = on_segv;
	action.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &action, NULL);
	if (prctl(TAGGED_ADDR_CTRL, TAGGED_ADDR_ENABLE | MTE_TCF_SYNC | (0xfffeUL << MTE_TAG_SHIFT),
		  0, 0, 0)) {
		printf("MTE-CHECK prctl refused: no MTE here\n");
		return 2;
	}
	page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | MTE_PROT, MAP_PRIVATE | MAP_ANONYMOUS,
		    -1, 0);
	if (page == MAP_FAILED) {
		printf("MTE-CHECK mmap(PROT_MTE) failed\n");
		return 3;
	}
	asm volatile("irg %0, %1" : "=r"(tagged) : "r"(page));
	asm volatile("stg %0, [%0]" : : "r"(tagged) : "memory");
	*(volatile unsigned char *)tagged = 1;
	wrong = (unsigned char *)((uintptr_t)tagged ^ (1UL << 56));
	expected = (uintptr_t)wrong;
	printf("MTE-CHECK tag %lu stored; storing through tag %lu\n",
	       (unsigned long)((uintptr_t)tagged >> 56 & 0xf),
	       (unsigned long)((uintptr_t)wrong >> 56 & 0xf));
	fflush(stdout);
	*(volatile unsigned char *)wrong = 2;
	printf("MTE-CHECK no fault\n");
	return 4;
}
