/* bench-checked: a loop of tag-checked loads and stores, to measure guest instructions
 * per second when every access is checked (benchmarks/bench_cpu_qemu.py under QEMU
 * TCG, benchmarks/bench_cpu.py on tagvisor's interpreter).
 *
 * TCF = sync whatever the boot block says; the runtime has the MMU on with RAM Normal
 * Tagged and SCTLR_EL1.ATA set. A 4 KiB buffer of 256 granules gets one IRG tag per
 * granule (never 0), and a table holds the tagged pointer of each granule; the table
 * itself is ordinary tag-0 memory reached through a tag-0 pointer, so its loads are
 * checked too. Nothing faults: a fault would panic (exit status 255).
 *
 * Iterations: the boot configuration's program argument (offset 24); 0 means
 * DEFAULT_ITERATIONS. The loop is inline assembly, 12 instructions per iteration of
 * which 5 are tag-checked accesses (3 loads, 2 stores) (objdump -d bench-checked.elf):
 *
 *     ldr  p, [table, g, lsl #3]   checked load: the tagged pointer of granule g
 *     ldr  x, [p]                  checked load
 *     add  x, x, i
 *     str  x, [p]                  checked store
 *     ldr  y, [p, #8]              checked load
 *     eor  y, y, x
 *     str  y, [p, #8]              checked store
 *     add  g, g, #1
 *     and  g, g, #255              next granule, wrapping at 256
 *     add  i, i, #1
 *     cmp  i, n
 *     b.ne loop
 *
 * Report BENCH_CHECKED: iterations, instructions per iteration, checked accesses per
 * iteration, a checksum of the buffer, TFSR_EL1; then UCALL_DONE 0 and power-off.
 */

#include "mte.h"
#include "runtime.h"

/* Not in reports.h yet (see docs/benchmarks.md). */
#define REPORT_BENCH_CHECKED 0x410 /* iterations, insns/iteration, checked accesses/iteration, checksum, TFSR */

#define DEFAULT_ITERATIONS 1000000UL
#define INSNS_PER_ITERATION 12
#define CHECKED_PER_ITERATION 5
#define GRANULES 256

/* Whole granules of its own (4 KiB aligned, 4 KiB long), so retagging it touches
 * nothing else. */
_Static_assert(GRANULES == 256, "the loop wraps with AND #255");
static uint64_t buffer[GRANULES * 2] __attribute__((aligned(4096)));
static uint64_t table[GRANULES];

int main(void)
{
    if (!tv_boot.mte) {
        tv_print("bench-checked: MTE is not available");
        return TV_EXIT_NO_MTE;
    }
    tv_set_tcf(TCF_SYNC);
    uint64_t base = (uint64_t)buffer;
    for (uint64_t g = 0; g < GRANULES; g++) {
        uint64_t p = mte_irg(base + g * MTE_GRANULE, 1);
        mte_stg(p);
        table[g] = p;
        ((volatile uint64_t *)p)[0] = g;
        ((volatile uint64_t *)p)[1] = ~g;
    }

    uint64_t n = tv_boot.arg ? tv_boot.arg : DEFAULT_ITERATIONS;
    uint64_t i = 0, g = 0, p, x, y;
    __asm__ volatile("1:\n\t"
                     "ldr  %[p], [%[table], %[g], lsl #3]\n\t"
                     "ldr  %[x], [%[p]]\n\t"
                     "add  %[x], %[x], %[i]\n\t"
                     "str  %[x], [%[p]]\n\t"
                     "ldr  %[y], [%[p], #8]\n\t"
                     "eor  %[y], %[y], %[x]\n\t"
                     "str  %[y], [%[p], #8]\n\t"
                     "add  %[g], %[g], #1\n\t"
                     "and  %[g], %[g], #255\n\t"
                     "add  %[i], %[i], #1\n\t"
                     "cmp  %[i], %[n]\n\t"
                     "b.ne 1b"
                     : [i] "+r"(i), [g] "+r"(g), [p] "=&r"(p), [x] "=&r"(x), [y] "=&r"(y)
                     : [n] "r"(n), [table] "r"(table)
                     : "cc", "memory");

    uint64_t sum = 0;
    for (uint64_t k = 0; k < GRANULES; k++) {
        volatile uint64_t *q = (volatile uint64_t *)table[k];
        sum = (sum << 1 | sum >> 63) ^ q[0] ^ (q[1] * 0x9E3779B97F4A7C15UL);
    }
    tv_report(REPORT_BENCH_CHECKED, 5, n, (uint64_t)INSNS_PER_ITERATION,
              (uint64_t)CHECKED_PER_ITERATION, sum, tv_read_tfsr());
    return TV_EXIT_OK;
}
