/* bench-int: a plain integer loop, to measure how many guest instructions per second
 * an implementation of the A64 architecture runs (benchmarks/bench_cpu_qemu.py runs it
 * under QEMU TCG, benchmarks/bench_cpu.py on tagvisor's interpreter).
 *
 * Iterations: the boot configuration's program argument (offset 24); 0 means
 * DEFAULT_ITERATIONS. The loop is inline assembly so that its length does not depend
 * on the compiler: 8 instructions per iteration (objdump -d bench-int.elf, main):
 *
 *     add  a, a, i          accumulate the counter
 *     lsl  t, a, #3         shift
 *     eor  b, b, t          mix
 *     lsr  t, b, #5         shift
 *     add  a, a, t          accumulate
 *     add  i, i, #1         count
 *     cmp  i, n             compare
 *     b.ne loop             branch
 *
 * Everything else the guest runs (boot, reports) is the same for every N, so the
 * difference of two runs with different N is exactly (N2 - N1) * 8 instructions.
 * Report BENCH_INT: iterations, instructions per iteration, a checksum of the loop's
 * registers (a ^ b), then UCALL_DONE 0 and power-off.
 */

#include "runtime.h"

/* Not in reports.h yet (see docs/benchmarks.md). */
#define REPORT_BENCH_INT 0x400 /* iterations, instructions per iteration, checksum */

#define DEFAULT_ITERATIONS 1000000UL
#define INSNS_PER_ITERATION 8

int main(void)
{
    uint64_t n = tv_boot.arg ? tv_boot.arg : DEFAULT_ITERATIONS;
    uint64_t i = 0, a = 1, b = 0x9E3779B97F4A7C15UL, t;
    __asm__ volatile("1:\n\t"
                     "add  %[a], %[a], %[i]\n\t"
                     "lsl  %[t], %[a], #3\n\t"
                     "eor  %[b], %[b], %[t]\n\t"
                     "lsr  %[t], %[b], #5\n\t"
                     "add  %[a], %[a], %[t]\n\t"
                     "add  %[i], %[i], #1\n\t"
                     "cmp  %[i], %[n]\n\t"
                     "b.ne 1b"
                     : [i] "+r"(i), [a] "+r"(a), [b] "+r"(b), [t] "=&r"(t)
                     : [n] "r"(n)
                     : "cc");
    tv_report(REPORT_BENCH_INT, 3, n, (uint64_t)INSNS_PER_ITERATION, a ^ b);
    return TV_EXIT_OK;
}
