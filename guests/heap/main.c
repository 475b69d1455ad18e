/* heap: the tagged heap (lib/tagheap) catching a use-after-free, a linear overflow and
 * an underflow, and refusing a double free, in the tag check mode from the boot
 * configuration (sync by default).
 *
 * Three adjacent 64-byte chunks a, b, c are allocated and filled; a is freed. Then:
 *   use-after-free  8-byte load through the stale pointer a
 *   overflow        8-byte store at b + 60: 4 bytes in b, 4 in c (faults in c's granule)
 *   underflow       1-byte load at b - 1 (the last byte of the freed a)
 *   double free     free(a) again
 * Each bad access reports (pointer, ESR, FAR, TFSR_EL1): ESR and FAR of a synchronous
 * fault the hook caught (0 when none), TFSR_EL1 read straight after the access
 * (asynchronous faults), then cleared. The program checks that what it caught is what
 * the mode promises: sync faults on every bad access in sync mode, TFSR.TF0 in async
 * mode, loads sync and stores async in asymmetric mode, nothing with TCF none.
 */

#include "mte.h"
#include "runtime.h"
#include "tagheap.h"

#define CHUNK 64UL
#define ARENA_SIZE (8UL << 20)
#define TFSR_TF0 1UL

static uint64_t sync_faults, async_hits;

static uint64_t arena_base(void)
{
    return ((uint64_t)__image_end + (2UL << 20) - 1) & ~((2UL << 20) - 1);
}

/* Whether an access of this kind faults synchronously / sets TFSR in the mode. */
static int expect_sync(int store)
{
    return tv_boot.tcf == TCF_SYNC || (tv_boot.tcf == TCF_ASYMM && !store);
}
static int expect_async(int store)
{
    return tv_boot.tcf == TCF_ASYNC || (tv_boot.tcf == TCF_ASYMM && store);
}

static void bad_access(uint64_t id, uint64_t ptr, unsigned size, int store)
{
    tv_clear_tfsr();
    tv_catch_faults();
    if (store)
        tv_store64(ptr, 0x4141414141414141UL);
    else if (size == 1)
        tv_load8(ptr);
    else
        tv_load64(ptr);
    uint64_t tfsr = tv_read_tfsr();
    uint64_t faulted = tv_last_fault.count;
    uint64_t esr = faulted ? tv_last_fault.esr : 0, far = faulted ? tv_last_fault.far : 0;
    tv_set_fault_hook(0);
    tv_clear_tfsr();
    tv_report(id, 4, ptr, esr, far, tfsr);

    sync_faults += faulted;
    async_hits += (tfsr & TFSR_TF0) != 0;
    TV_CHECK_EQ(expect_sync(store), faulted);
    TV_CHECK_EQ(expect_async(store), tfsr & TFSR_TF0);
    if (faulted) {
        TV_CHECK_EQ(ESR_EC_DABT_CUR, ESR_EC(esr));
        TV_CHECK_EQ(DFSC_TAG_CHECK, ESR_DFSC(esr));
        TV_CHECK_EQ(store, (esr >> 6) & 1); /* WnR */
    }
}

/* With a program argument, spin that many iterations between the use-after-free and
 * the overflow: the window in which `tagvisor tour` snapshots and live-migrates the
 * guest, so the second bug is caught on the destination. 0 (the default) does not
 * spin and changes nothing else. HEAP_HOLD spins until the VMM stores a non-zero word
 * at HEAP_RELEASE (just after the boot block): a window that does not depend on the
 * host's speed, for migrations between backends. */
#define HEAP_HOLD (~0UL)
#define HEAP_RELEASE (TV_BOOT_CONFIG + 40)

static void spin_between_bugs(void)
{
    if (tv_boot.arg == HEAP_HOLD) {
        while (!*(volatile uint64_t *)HEAP_RELEASE) {
        }
        return;
    }
    for (volatile uint64_t i = 0; i < tv_boot.arg; i++) {
    }
}

int main(void)
{
    if (!tv_boot.mte) {
        tv_print("heap: MTE is not available");
        return TV_EXIT_NO_MTE;
    }
    uint64_t base = arena_base();
    tagheap_init(base, ARENA_SIZE);
    tv_report(REPORT_HEAP_INIT, 4, base, ARENA_SIZE, TAGHEAP_CLASSES, tv_boot.tcf);

    uint64_t chunk[3];
    for (uint64_t i = 0; i < 3; i++) {
        chunk[i] = tagheap_alloc(CHUNK);
        tv_report(REPORT_HEAP_ALLOC, 4, i, chunk[i], CHUNK, tagheap_last_exclude);
        TV_CHECK(chunk[i] != 0);
        TV_CHECK(mte_tag_of(chunk[i]) != 0);
        for (uint64_t w = 0; w < CHUNK / 8; w++)
            tv_store64(chunk[i] + 8 * w, (i << 32) | w);
    }
    uint64_t a = chunk[0], b = chunk[1], c = chunk[2];
    TV_CHECK_EQ(mte_untagged(a) + CHUNK, mte_untagged(b));
    TV_CHECK_EQ(mte_untagged(b) + CHUNK, mte_untagged(c));
    TV_CHECK(mte_tag_of(a) != mte_tag_of(b));
    TV_CHECK(mte_tag_of(b) != mte_tag_of(c));
    TV_CHECK_EQ((1UL << 32) | 7, tv_load64(b + 56));

    TV_CHECK_EQ(0, tagheap_free(a));
    uint64_t retag = mte_get_tag(a);
    tv_report(REPORT_HEAP_FREE, 4, 0, a, retag, tagheap_last_exclude);
    TV_CHECK(retag != 0 && retag != mte_tag_of(a) && retag != mte_tag_of(b));

    tv_print("heap: use-after-free, overflow, underflow");
    bad_access(REPORT_HEAP_UAF, a, 8, 0);
    spin_between_bugs();
    bad_access(REPORT_HEAP_OVERFLOW, b + CHUNK - 4, 8, 1);
    bad_access(REPORT_HEAP_UNDERFLOW, b - 1, 1, 0);

    int refused = tagheap_free(a) != 0;
    tv_report(REPORT_HEAP_DOUBLE_FREE, 2, a, (uint64_t)refused);
    TV_CHECK(refused);

    tv_report(REPORT_HEAP_SUMMARY, 3, sync_faults, async_hits, tv_boot.tcf);
    return tv_failures ? TV_EXIT_CHECKS_FAILED : TV_EXIT_OK;
}
