/* mte-smoke: every MTE instruction at EL1, and the EL1-only controls, each result
 * reported with UCALL_SYNC (ids in runtime/reports.h, layout in guests/README.md).
 *
 * The program runs with TCF = sync whatever the boot configuration says (it needs
 * synchronous faults to observe tag checks) and works in a 64 KiB arena of its own.
 * Besides reporting, it checks what the architecture fixes (TV_CHECK_*), so a run on
 * any implementation ends with status 0 only if those hold. Boot argument bit 0: end
 * with an undefined instruction instead of returning (exercises the panic path).
 */

#include "mte.h"
#include "runtime.h"

#define ARENA_SIZE 0x10000UL
static uint8_t arena_bytes[ARENA_SIZE] __attribute__((aligned(4096), section(".noinit")));
#define A ((uint64_t)arena_bytes)

#define WINDOW 1024UL
#define FILL_BYTE 0xA5
#define IRG_SEED 0xBEEFUL
#define ESR_TAG_LOAD 0x96000011UL  /* EC 0x25, IL, DFSC 0x11 */
#define ESR_TAG_STORE 0x96000051UL /* ... and WnR */

/* The tag prepare_window gives granule g of a window. */
static uint64_t window_pattern(uint64_t g) { return (g * 7 + 3) & 0xF; }

/* Data FILL_BYTE and tags window_pattern() over [base, base + WINDOW). */
static void prepare_window(uint64_t base)
{
    mte_set_tco(1);
    memset((void *)base, FILL_BYTE, WINDOW);
    for (uint64_t g = 0; g < WINDOW / MTE_GRANULE; g++)
        mte_stg(mte_with_tag(base + g * MTE_GRANULE, window_pattern(g)));
    mte_set_tco(0);
}

/* Reports id with the address and LDGM of the window in GMID_EL1 blocks (at most 4). */
static void report_window_tags(uint64_t id, uint64_t addr, uint64_t base)
{
    uint64_t block = mte_gm_block();
    uint64_t w[4] = {0, 0, 0, 0};
    for (unsigned k = 0; k < 4 && k * block < WINDOW; k++)
        w[k] = mte_ldgm(base + k * block);
    tv_report(id, 5, addr, w[0], w[1], w[2], w[3]);
}

/* Reports id with the address, the offset of the first zero byte of the window
 * (WINDOW when none) and how many bytes are zero. */
static void report_window_zeros(uint64_t id, uint64_t addr, uint64_t base)
{
    uint64_t first = WINDOW, count = 0;
    mte_set_tco(1);
    for (uint64_t i = 0; i < WINDOW; i++) {
        if (((volatile uint8_t *)base)[i] == 0) {
            if (first == WINDOW)
                first = i;
            count++;
        }
    }
    mte_set_tco(0);
    tv_report(id, 3, addr, first, count);
}

static void smoke_irg(void)
{
    static const uint64_t excludes[8] = {0, 0x2, 0x00F0, 0xFFFE, 0x8000, 0x5555, 0x7FFE, 0x0C3C};
    write_sysreg(gcr_el1, 0x1);
    write_sysreg(rgsr_el1, IRG_SEED << 8);
    isb();
    tv_report(REPORT_SMOKE_IRG_START, 2, read_sysreg(rgsr_el1), read_sysreg(gcr_el1));
    for (uint64_t i = 0; i < 32; i++) {
        uint64_t xn = (A + i * MTE_GRANULE) | (0xA0UL << 56) | ((i & 0xF) << 56);
        uint64_t xm = excludes[i % 8];
        uint64_t r = mte_irg(xn, xm);
        uint64_t rgsr = read_sysreg(rgsr_el1);
        tv_report(REPORT_SMOKE_IRG, 5, i, xn, xm, r, rgsr);
        TV_CHECK(mte_tag_of(r) != 0 || (xm | 1) == 0xFFFF); /* GCR excludes tag 0 */
        TV_CHECK(((xm | 1) >> mte_tag_of(r) & 1) == 0 || (xm | 1) == 0xFFFF);
        TV_CHECK_EQ(mte_untagged(xn) | (xn & (0xF0UL << 56)), r & ~(0xFUL << 56));
    }
}

#define ADDG_CASE(n, xn, bytes, tag_offset)                                            \
    tv_report(REPORT_SMOKE_ADDG, 3, (uint64_t)(n), (uint64_t)(xn),                     \
              mte_addg((xn), bytes, tag_offset))
#define SUBG_CASE(n, xn, bytes, tag_offset)                                            \
    tv_report(REPORT_SMOKE_SUBG, 3, (uint64_t)(n), (uint64_t)(xn),                     \
              mte_subg((xn), bytes, tag_offset))
#define GMI_CASE(n, xn, xm)                                                            \
    tv_report(REPORT_SMOKE_GMI, 4, (uint64_t)(n), (uint64_t)(xn), (uint64_t)(xm),      \
              mte_gmi((xn), (xm)))

static void smoke_addg_subg_gmi(void)
{
    ADDG_CASE(0, mte_with_tag(A, 3), 0, 0);
    ADDG_CASE(1, mte_with_tag(A, 3), 16, 1);
    ADDG_CASE(2, mte_with_tag(A, 15), 1008, 1);
    ADDG_CASE(3, mte_with_tag(A, 14), 32, 15);
    ADDG_CASE(4, 0x00FFFFFFFFFFFFF0UL, 16, 2);
    ADDG_CASE(5, 0xF5FFFFFFFFFFFFF0UL, 16, 0);
    SUBG_CASE(0, mte_with_tag(A + 0x400, 3), 16, 1);
    SUBG_CASE(1, mte_with_tag(A, 0), 0, 0);
    SUBG_CASE(2, mte_with_tag(0x10, 7), 32, 2);
    SUBG_CASE(3, mte_with_tag(A, 1), 1008, 15);
    GMI_CASE(0, mte_with_tag(A, 5), 0);
    GMI_CASE(1, mte_with_tag(A, 0), 0x8000);
    GMI_CASE(2, mte_with_tag(A, 15) | (0xF0UL << 56), 0xFFFFFFFF00000000UL);
    TV_CHECK_EQ(1UL << 5, mte_gmi(mte_with_tag(A, 5), 0));
}

static void smoke_tag_stores(void)
{
    uint64_t p;

    p = mte_with_tag(A + 0x100, 5);
    mte_stg(p);
    tv_report(REPORT_SMOKE_STG, 3, p, mte_ldg(A + 0x108, A + 0x108), mte_ldg(A + 0x110, A + 0x110));
    TV_CHECK_EQ(5, mte_get_tag(A + 0x10F));
    TV_CHECK_EQ(0, mte_get_tag(A + 0x110));

    p = mte_with_tag(A + 0x200, 0xA);
    mte_st2g(p);
    tv_report(REPORT_SMOKE_ST2G, 4, p, mte_ldg(A + 0x200, A + 0x200),
              mte_ldg(A + 0x210, A + 0x210), mte_ldg(A + 0x220, A + 0x220));
    TV_CHECK_EQ(0xA, mte_get_tag(A + 0x210));

    p = mte_with_tag(A + 0x300, 0xC);
    mte_stgp(p, 0x1111222233334444UL, 0x5555666677778888UL);
    tv_report(REPORT_SMOKE_STGP, 4, p, mte_ldg(A + 0x300, A + 0x300), tv_load64(p),
              tv_load64(p + 8));
    TV_CHECK_EQ(0x5555666677778888UL, tv_load64(p + 8));

    mte_set_tco(1);
    memset((void *)(A + 0x400), FILL_BYTE, 0x20);
    mte_set_tco(0);
    p = mte_with_tag(A + 0x400, 6);
    mte_stzg(p);
    tv_report(REPORT_SMOKE_STZG, 4, p, mte_ldg(A + 0x400, A + 0x400), tv_load64(p),
              tv_load64(A + 0x410));
    TV_CHECK_EQ(0, tv_load64(p + 8));

    mte_set_tco(1);
    memset((void *)(A + 0x500), FILL_BYTE, 0x40);
    mte_set_tco(0);
    p = mte_with_tag(A + 0x500, 0xD);
    mte_stz2g(p);
    tv_report(REPORT_SMOKE_STZ2G, 5, p, mte_ldg(A + 0x500, A + 0x500),
              mte_ldg(A + 0x510, A + 0x510), tv_load64(p + 24), tv_load64(A + 0x520));
    TV_CHECK_EQ(0xD, mte_get_tag(A + 0x51F));
}

static void smoke_block_tags(void)
{
    uint64_t block = mte_gm_block();
    tv_print("mte-smoke: LDGM/STGM/STZGM");

    /* STGM: the nibbles of Xt become the block's tags; read them back with LDG. */
    uint64_t addr = A + 0x1000, value = 0xFEDCBA9876543210UL, packed = 0;
    mte_stgm(addr, value);
    for (uint64_t g = 0; g < 16; g++)
        packed |= mte_get_tag(addr + g * MTE_GRANULE) << (4 * g);
    tv_report(REPORT_SMOKE_STGM, 4, addr, value, packed, mte_get_tag(addr + 16 * MTE_GRANULE));
    if (block == 256)
        TV_CHECK_EQ(value, packed);

    /* LDGM: tags set granule by granule with STG, read in one go from inside the block. */
    addr = A + 0x1100;
    for (uint64_t g = 0; g < 16; g++)
        mte_stg(mte_with_tag(addr + g * MTE_GRANULE, g * 5 + 1));
    tv_report(REPORT_SMOKE_LDGM, 2, addr + 0x48, mte_ldgm(addr + 0x48));

    /* STZGM: zero and tag one DCZID block with Xt[3:0], from an address inside it. */
    uint64_t base = A + 0x1400;
    prepare_window(base);
    addr = base + 0x48;
    mte_stzgm(addr, 0xABCDEF07UL);
    report_window_tags(REPORT_SMOKE_STZGM, addr, base);
    report_window_zeros(REPORT_SMOKE_STZGM_DATA, addr, base);
    TV_CHECK_EQ(7, mte_get_tag(addr));
}

static void smoke_dc_gva(void)
{
    uint64_t base = A + 0x2000;
    prepare_window(base);
    uint64_t p = mte_with_tag(base + 0x124, 9);
    mte_dc_gva(p);
    report_window_tags(REPORT_SMOKE_DC_GVA, p, base);
    TV_CHECK_EQ(9, mte_get_tag(base + 0x120));

    base = A + 0x2400;
    prepare_window(base);
    p = mte_with_tag(base + 0x124, 0xB);
    mte_dc_gzva(p);
    report_window_tags(REPORT_SMOKE_DC_GZVA, p, base);
    report_window_zeros(REPORT_SMOKE_DC_GZVA_DATA, p, base);
    TV_CHECK_EQ(0, tv_load64(mte_with_tag(base + 0x120, 0xB)));
}

/* One checked access with the fault hook armed: reports (case, ptr, ESR, FAR, value). */
static void tcma_case(uint64_t n, uint64_t ptr, int store, uint64_t expect_esr)
{
    uint64_t value = 0;
    tv_catch_faults();
    if (store) {
        tv_store64(ptr, 0x5A5A5A5A5A5A5A5AUL);
    } else {
        value = tv_load64(ptr);
    }
    uint64_t faulted = tv_last_fault.count;
    tv_set_fault_hook(0);
    if (faulted)
        value = 0;
    else if (store)
        value = tv_load64(mte_with_tag(ptr, 9));
    tv_report(REPORT_SMOKE_TCMA, 5, n, ptr, faulted ? tv_last_fault.esr : 0,
              faulted ? tv_last_fault.far : 0, value);
    TV_CHECK_EQ(expect_esr, faulted ? tv_last_fault.esr : 0);
}

static void smoke_tcma(void)
{
    uint64_t g = A + 0x3000;
    mte_stg(mte_with_tag(g, 9));
    tv_store64(mte_with_tag(g, 9), 0x1122334455667788UL);

    tv_set_tcma0(1);
    tcma_case(0, g, 0, 0);                                /* tag 0: match-all */
    tcma_case(1, mte_with_tag(g, 0xF), 0, ESR_TAG_LOAD);  /* bits 59:55 = 11110 */
    tcma_case(2, mte_with_tag(g, 3), 0, ESR_TAG_LOAD);
    tcma_case(3, g + 8, 1, 0);                            /* unchecked store */
    tv_set_tcma0(0);
    tcma_case(4, g, 0, ESR_TAG_LOAD);
}

static void smoke_ata_off(void)
{
    uint64_t h = A + 0x3100;
    mte_stg(mte_with_tag(h, 9));
    tv_store64(mte_with_tag(h, 9), 0x99);

    tv_set_ata(0);
    uint64_t ldg = mte_ldg(mte_with_tag(h, 5), h);
    uint64_t rgsr_before = read_sysreg(rgsr_el1);
    uint64_t irg = mte_irg(mte_with_tag(h, 6), 0);
    uint64_t rgsr_after = read_sysreg(rgsr_el1);
    uint64_t addg = mte_addg(mte_with_tag(h, 6), 16, 1);
    mte_stg(mte_with_tag(h, 4));                     /* ignored */
    mte_stgp(mte_with_tag(h, 4), 0xCAFE, 0xF00D);   /* data only */
    tv_catch_faults();
    tv_load64(mte_with_tag(h, 3));                   /* unchecked */
    uint64_t esr = tv_last_fault.count ? tv_last_fault.esr : 0;
    tv_set_fault_hook(0);
    tv_set_ata(1);

    tv_report(REPORT_SMOKE_ATA_OFF, 5, ldg, irg, rgsr_before, rgsr_after, esr);
    tv_report(REPORT_SMOKE_ATA_ADDG, 2, mte_with_tag(h, 6), addg);
    uint64_t ldg_on = mte_ldg(h, h);
    uint64_t data = tv_load64(mte_with_tag(h, 9));
    tv_report(REPORT_SMOKE_ATA_ON, 2, ldg_on, data);
    TV_CHECK_EQ(h, ldg);
    TV_CHECK_EQ(0, mte_tag_of(irg));
    TV_CHECK_EQ(rgsr_before, rgsr_after);
    TV_CHECK_EQ(0, esr);
    TV_CHECK_EQ(mte_with_tag(h, 9), ldg_on);
    TV_CHECK_EQ(0xCAFE, data);
}

int main(void)
{
    if (!tv_boot.mte) {
        tv_print("mte-smoke: MTE is not available");
        return TV_EXIT_NO_MTE;
    }
    tv_set_tcf(TCF_SYNC);
    tv_report(REPORT_SMOKE_ARENA, 2, A, ARENA_SIZE);
    smoke_irg();
    smoke_addg_subg_gmi();
    smoke_tag_stores();
    smoke_block_tags();
    smoke_dc_gva();
    smoke_tcma();
    smoke_ata_off();
    if (tv_boot.arg & 1) {
        tv_print("mte-smoke: now an undefined instruction");
        __asm__ volatile("udf #0x7e");
    }
    return tv_failures ? TV_EXIT_CHECKS_FAILED : TV_EXIT_OK;
}
