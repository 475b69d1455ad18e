/* fill: the guest of the migration benchmarks. It fills a region with random data and
 * random non-zero tags, reports, and then either idles or keeps churning.
 *
 * Program argument (offset 24 of the boot block):
 *   bits 31:0   fill size in MiB (0: 1 GiB, or all the RAM after the image if there
 *               is less; a size that does not fit ends the guest with status 1);
 *   bits 63:32  churn rate after the fill, in 64 KiB spans per second: 0 idles (WFI
 *               with interrupts masked: the VCPU sleeps), 0xFFFFFFFF churns as fast as
 *               it can, anything else is paced with the generic timer's CNTVCT_EL0.
 * The region starts at the first 2 MiB boundary after the image. The runtime maps only
 * the first GiB of RAM; fill maps the rest of it (1 GiB Normal Tagged blocks) first.
 *
 * Tags are stored with STGM, one random tag in 1..15 per 16-byte granule (per
 * 256-byte allocation when churning, as tagvisor.kvm.model.workloads.churn does), and
 * data are written with plain stores; tag checking is off (TCF = none) since the
 * pointers are untagged. All randomness is xorshift64* from the IRG seed (offset 32).
 *
 * Reports: FILL_INIT (base, bytes, churn rate, seed) before the fill; FILL_DONE (base,
 * bytes, sum of the data words, xor of the region's tags read back with LDGM, one
 * 64-bit word per 256 bytes; checked against what was stored) after it; while churning,
 * FILL_CHURN (spans rewritten) every 1024 spans.
 */

#include "mte.h"
#include "runtime.h"

/* Not in reports.h yet (see docs/benchmarks.md). */
#define REPORT_FILL_INIT 0x500  /* region base, bytes, churn rate, seed */
#define REPORT_FILL_DONE 0x501  /* region base, bytes, data sum, xor of tag words */
#define REPORT_FILL_CHURN 0x502 /* spans rewritten so far */

#define GiB (1UL << 30)
#define MiB (1UL << 20)
#define DEFAULT_FILL_MIB 1024
#define SPAN (64UL << 10)
#define ALLOCATION 256UL
#define CHURN_UNPACED 0xFFFFFFFFUL
#define CHURN_REPORT_EVERY 1024
#define GOLDEN 0x9E3779B97F4A7C15UL
/* Level-1 block descriptor of the runtime's RAM entry without its address: Normal
 * Tagged (AttrIndx 1), inner shareable, AF, UXN. */
#define RAM_BLOCK_ATTRS 0x0040000000000705UL
#define NIBBLES_LOW 0x0F0F0F0F0F0F0F0FUL
#define ONES 0x0101010101010101UL

extern uint64_t tv_l1_table[512];

static uint64_t rng_state;

static inline uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DUL;
}

/* 16 tags in 1..15 from 16 random nibbles: v -> 1 + (15 v >> 4), byte lane by byte
 * lane (15 * 15 < 256, so one multiplication does eight lanes without carries). */
static inline uint64_t nonzero_tags(uint64_t r)
{
    uint64_t lo = r & NIBBLES_LOW, hi = (r >> 4) & NIBBLES_LOW;
    lo = (((lo * 15) >> 4) & NIBBLES_LOW) + ONES;
    hi = (((hi * 15) >> 4) & NIBBLES_LOW) + ONES;
    return lo | (hi << 4);
}

/* Maps RAM beyond the first GiB, as the runtime maps the first. */
static void map_all_ram(void)
{
    uint64_t end = TV_RAM_BASE + tv_boot.ram_size;
    for (uint64_t addr = TV_RAM_BASE + GiB; addr < end && (addr >> 30) < 512; addr += GiB)
        tv_l1_table[addr >> 30] = addr | RAM_BLOCK_ATTRS;
    dsb(ishst);
    __asm__ volatile("tlbi vmalle1" : : : "memory");
    dsb(ish);
    isb();
}

/* One 256-byte allocation: tags (STGM, GMID_EL1 block by block), then 32 random words. */
static inline uint64_t write_allocation(uint64_t addr, uint64_t tags, uint64_t block)
{
    for (uint64_t off = 0; off < ALLOCATION; off += block)
        mte_stgm(addr + off, tags);
    uint64_t *p = (uint64_t *)addr, sum = 0;
    for (unsigned i = 0; i < ALLOCATION / 8; i++) {
        uint64_t v = rng();
        p[i] = v;
        sum += v;
    }
    return sum;
}

static uint64_t read_counter(void)
{
    isb();
    return read_sysreg(cntvct_el0);
}

__attribute__((noreturn)) static void churn(uint64_t base, uint64_t bytes, uint64_t rate)
{
    uint64_t spans = bytes / SPAN, block = mte_gm_block();
    uint64_t ticks = rate == CHURN_UNPACED ? 0 : read_sysreg(cntfrq_el0) / rate;
    uint64_t start = read_counter();
    for (uint64_t done = 0;; done++) {
        while (ticks && read_counter() - start < done * ticks)
            ;
        uint64_t span = base + (rng() % spans) * SPAN;
        for (uint64_t a = span; a < span + SPAN; a += ALLOCATION)
            write_allocation(a, (1 + rng() % 15) * 0x1111111111111111UL, block);
        if ((done + 1) % CHURN_REPORT_EVERY == 0)
            tv_report(REPORT_FILL_CHURN, 1, done + 1);
    }
}

int main(void)
{
    if (!tv_boot.mte) {
        tv_print("fill: MTE is not available");
        return TV_EXIT_NO_MTE;
    }
    uint64_t mib = tv_boot.arg & 0xFFFFFFFFUL, rate = tv_boot.arg >> 32;
    uint64_t base = ((uint64_t)__image_end + 2 * MiB - 1) & ~(2 * MiB - 1);
    uint64_t end = TV_RAM_BASE + tv_boot.ram_size;
    uint64_t bytes = mib * MiB;
    if (!mib) {
        bytes = DEFAULT_FILL_MIB * MiB;
        if (end > base && base + bytes > end)
            bytes = (end - base) & ~(MiB - 1);
    }
    if (!bytes || base + bytes > end || base + bytes > 512 * GiB) {
        tv_print("fill: not enough RAM");
        return TV_EXIT_CHECKS_FAILED;
    }
    map_all_ram();
    tv_set_tcf(TCF_NONE);
    rng_state = tv_boot.seed * GOLDEN + 1;
    tv_report(REPORT_FILL_INIT, 4, base, bytes, rate, (uint64_t)tv_boot.seed);

    uint64_t block = mte_gm_block(), sum = 0, tag_xor = 0;
    for (uint64_t a = base; a < base + bytes; a += ALLOCATION) {
        uint64_t tags = nonzero_tags(rng());
        tag_xor ^= tags;
        sum += write_allocation(a, tags, block);
    }
    /* The tags read back (LDGM) as they were written. */
    uint64_t readback = 0;
    for (uint64_t a = base; a < base + bytes; a += ALLOCATION) {
        uint64_t tags = 0;
        for (uint64_t off = 0; off < ALLOCATION; off += block)
            tags |= mte_ldgm(a + off);
        readback ^= tags;
    }
    TV_CHECK_EQ(tag_xor, readback);
    tv_report(REPORT_FILL_DONE, 4, base, bytes, sum, readback);
    if (tv_failures)
        return TV_EXIT_CHECKS_FAILED;

    if (rate)
        churn(base, bytes, rate);
    for (;;)
        __asm__ volatile("wfi" : : : "memory");
}
