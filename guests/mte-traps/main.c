/* mte-traps: guest code that touches MTE, and what the guest sees.
 *
 * Run by the conformance suite in a VM with MTE and in one without, on the model and
 * on the real kernel. With its own vector table installed (probes.S) it reads every
 * MTE system register (GCR_EL1, RGSR_EL1, TFSR_EL1, TFSRE0_EL1, GMID_EL1), runs IRG,
 * STG and LDG, then writes all ones to each writable register and reads it back, and
 * reads ID_AA64PFR1_EL1 (where a guest learns whether it has MTE). For
 * each probe: REPORT_TRAPS_PROBE (probe, ESR_EL1 or 0 if it did not trap, the value
 * read or the tag produced, ELR_EL1 - probe address, FAR_EL1). Then the registers go
 * back to what the runtime set (quietly: without MTE those writes trap too), the
 * runtime's vectors are restored and REPORT_TRAPS_SUMMARY (exceptions taken, vectors
 * they arrived at as a bitmap, whether the runtime found MTE usable) ends the run.
 *
 * Without MTE, KVM makes the registers UNDEFINED (an UNDEF it injects: EC 0); what
 * GMID_EL1 does depends on the kernel (docs/conformance.md, "mte_traps").
 */

#include "mte.h"
#include "runtime.h"

struct traps_record {
    uint64_t esr, elr, far, kind, count;
};
extern volatile struct traps_record traps_last;
extern char traps_vectors[];

/* Every probe takes one argument (the MRS ones ignore it), so one pointer type calls all. */
uint64_t traps_mrs_gcr(uint64_t unused);
uint64_t traps_mrs_rgsr(uint64_t unused);
uint64_t traps_mrs_tfsr(uint64_t unused);
uint64_t traps_mrs_tfsre0(uint64_t unused);
uint64_t traps_mrs_gmid(uint64_t unused);
uint64_t traps_mrs_pfr1(uint64_t unused);
uint64_t traps_msr_gcr(uint64_t value);
uint64_t traps_msr_rgsr(uint64_t value);
uint64_t traps_msr_tfsr(uint64_t value);
uint64_t traps_msr_tfsre0(uint64_t value);
uint64_t traps_irg(uint64_t ptr);
uint64_t traps_stg(uint64_t tagged_ptr);
uint64_t traps_ldg(uint64_t ptr);

enum probe {
    MRS_GCR, MRS_RGSR, MRS_TFSR, MRS_TFSRE0, MRS_GMID,
    IRG, MRS_RGSR_AFTER_IRG, STG, LDG,
    MSR_GCR, MRS_GCR_BACK, MSR_RGSR, MRS_RGSR_BACK,
    MSR_TFSR, MRS_TFSR_BACK, MSR_TFSRE0, MRS_TFSRE0_BACK,
    MRS_PFR1,
};

#define ALL_ONES (~0UL)
#define STG_TAG 0xAUL

static uint8_t granules[64] __attribute__((aligned(16)));
static uint64_t kinds;

typedef uint64_t (*probe_fn)(uint64_t);

/* Run one probe with argument `arg`; `tag_only` reports the result's tag bits. */
static void probe(enum probe id, probe_fn fn, uint64_t arg, int tag_only)
{
    uint64_t before = traps_last.count;
    uint64_t value = fn(arg);
    int trapped = traps_last.count != before;
    if (tag_only)
        value = mte_tag_of(value);
    if (trapped)
        kinds |= 1UL << traps_last.kind;
    tv_report(REPORT_TRAPS_PROBE, 5, (uint64_t)id, trapped ? traps_last.esr : 0,
              trapped ? 0 : value, trapped ? traps_last.elr - (uint64_t)fn : 0,
              trapped ? traps_last.far : 0);
}

#define READ(id, fn) probe(id, fn, 0, 0)

int main(void)
{
    uint64_t buffer = (uint64_t)granules;
    uint64_t vbar = read_sysreg(vbar_el1);
    write_sysreg(vbar_el1, (uint64_t)traps_vectors);
    isb();

    READ(MRS_GCR, traps_mrs_gcr);
    READ(MRS_RGSR, traps_mrs_rgsr);
    READ(MRS_TFSR, traps_mrs_tfsr);
    READ(MRS_TFSRE0, traps_mrs_tfsre0);
    READ(MRS_GMID, traps_mrs_gmid);

    probe(IRG, traps_irg, buffer, 1);
    READ(MRS_RGSR_AFTER_IRG, traps_mrs_rgsr);
    probe(STG, traps_stg, mte_with_tag(buffer, STG_TAG), 0);
    probe(LDG, traps_ldg, buffer, 1);

    probe(MSR_GCR, traps_msr_gcr, ALL_ONES, 0);
    READ(MRS_GCR_BACK, traps_mrs_gcr);
    probe(MSR_RGSR, traps_msr_rgsr, ALL_ONES, 0);
    READ(MRS_RGSR_BACK, traps_mrs_rgsr);
    probe(MSR_TFSR, traps_msr_tfsr, ALL_ONES, 0);
    READ(MRS_TFSR_BACK, traps_mrs_tfsr);
    probe(MSR_TFSRE0, traps_msr_tfsre0, ALL_ONES, 0);
    READ(MRS_TFSRE0_BACK, traps_mrs_tfsre0);
    READ(MRS_PFR1, traps_mrs_pfr1); /* how a guest finds MTE: its VCPU's ID register */

    /* Back to the runtime's set-up (guests/README.md); without MTE these trap too. */
    traps_msr_gcr(0x1);
    traps_msr_rgsr((uint64_t)tv_boot.seed << 8);
    traps_msr_tfsr(0);
    traps_msr_tfsre0(0);

    uint64_t taken = traps_last.count;
    write_sysreg(vbar_el1, vbar);
    isb();
    tv_report(REPORT_TRAPS_SUMMARY, 3, taken, kinds, (uint64_t)tv_boot.mte);
    return TV_EXIT_OK;
}
