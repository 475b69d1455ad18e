/* kvm-probe: what KVM and the VMM do to a page's tags, seen from inside the guest.
 *
 * Run by the conformance suite on the model and on the real kernel. The VMM prepares
 * eight pages at PROBE_BASE (16 MiB into RAM, so RAM must be at least 32 MiB) before
 * the first instruction runs, and acts on two reports while the guest waits in its
 * ucall.
 *
 * Part 1, tags before and after the first touch. Pages 0-3 are as the VMM left them
 * (docs/conformance.md: 0 tags planted with COPY_TAGS TO_GUEST, 1 data written through
 * the VMM's mapping, 2 untouched, 3 tags planted then data written). For each:
 * REPORT_PROBE_PAGE (page, tag of the first granule, tag of the last, first data word
 * read through a pointer that carries the first granule's tag).
 *
 * Part 2, does a store that changes only tags reach the dirty log? Pages 4 and 5 get a
 * data store and page 6 a load, then REPORT_PROBE_LOG_RESET: the VMM reads (and so
 * clears and write-protects) the dirty log. Then: STG on page 4 (tags only), a data
 * store on page 5, a load on page 6, STG on the never-touched page 7.
 * REPORT_PROBE_LOG_READ: the VMM reads the log again and records pages 4-7.
 * REPORT_PROBE_AFTER (tag of page 4, tag of page 7, page 4's data word through its new
 * tag) shows the tag stores took effect.
 */

#include "mte.h"
#include "runtime.h"

#define PROBE_BASE (TV_RAM_BASE + (16UL << 20))
#define PAGE 4096UL
#define GRANULE 16UL
#define PROBE_PAGE(i) (PROBE_BASE + (uint64_t)(i) * PAGE)
#define TAG_PAGE4 0x9UL
#define TAG_PAGE7 0xCUL

int main(void)
{
    if (!tv_boot.mte)
        return TV_EXIT_NO_MTE;

    for (unsigned i = 0; i < 4; i++) {
        uint64_t first = mte_ldg(PROBE_PAGE(i), PROBE_PAGE(i));
        uint64_t last = PROBE_PAGE(i) + PAGE - GRANULE;
        tv_report(REPORT_PROBE_PAGE, 4, i, mte_tag_of(first), mte_get_tag(last),
                  tv_load64(first));
    }

    tv_store64(PROBE_PAGE(4), 0x4444);
    tv_store64(PROBE_PAGE(5), 0x5555);
    (void)tv_load64(PROBE_PAGE(6));
    tv_report(REPORT_PROBE_LOG_RESET, 0);

    mte_stg(mte_with_tag(PROBE_PAGE(4), TAG_PAGE4));
    tv_store64(PROBE_PAGE(5), 0x5556);
    (void)tv_load64(PROBE_PAGE(6));
    mte_stg(mte_with_tag(PROBE_PAGE(7), TAG_PAGE7));
    tv_report(REPORT_PROBE_LOG_READ, 0);

    tv_report(REPORT_PROBE_AFTER, 3, mte_get_tag(PROBE_PAGE(4)), mte_get_tag(PROBE_PAGE(7)),
              tv_load64(mte_with_tag(PROBE_PAGE(4), TAG_PAGE4)));
    return TV_EXIT_OK;
}
