/* tag-owner: one owner's tags on a memslot, seen and left behind from inside the guest.
 *
 * Run by the conformance suite (tagvisor.conformance.owners) on the model and on the
 * real kernel. The VMM adds a second memslot at OWNER_BASE (64 MiB into RAM's 1 GiB
 * block, which the runtime maps Normal Tagged) over the backing under test, and may
 * prepare its first pages before the first instruction runs: tags planted with
 * COPY_TAGS TO_GUEST, tags stored by the VMM's own STG, data written.
 *
 * For each of OWNER_PAGES pages: REPORT_OWNER_BEFORE (page, mask of the tags its 256
 * granules hold: bit t set if some granule has tag t), read with LDG, the guest's
 * first touch of the page. Then, if the argument is a tag (1-15), STG of that tag on
 * every granule of those pages and REPORT_OWNER_AFTER (page, mask) for each: the tags
 * this owner leaves behind for the next one.
 */

#include "mte.h"
#include "runtime.h"

#define OWNER_BASE (TV_RAM_BASE + (64UL << 20))
#define OWNER_PAGES 4
#define PAGE 4096UL

static uint64_t tag_mask(uint64_t page)
{
    uint64_t mask = 0;
    for (uint64_t granule = page; granule < page + PAGE; granule += MTE_GRANULE)
        mask |= 1UL << mte_get_tag(granule);
    return mask;
}

int main(void)
{
    if (!tv_boot.mte)
        return TV_EXIT_NO_MTE;
    uint64_t tag = tv_boot.arg & 0xF;

    for (uint64_t i = 0; i < OWNER_PAGES; i++)
        tv_report(REPORT_OWNER_BEFORE, 2, i, tag_mask(OWNER_BASE + i * PAGE));
    if (!tag)
        return TV_EXIT_OK;
    for (uint64_t i = 0; i < OWNER_PAGES; i++)
        mte_tag_range(mte_with_tag(OWNER_BASE + i * PAGE, tag), PAGE);
    for (uint64_t i = 0; i < OWNER_PAGES; i++)
        tv_report(REPORT_OWNER_AFTER, 2, i, tag_mask(OWNER_BASE + i * PAGE));
    return TV_EXIT_OK;
}
