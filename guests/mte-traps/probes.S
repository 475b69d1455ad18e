/* mte-traps: the probes and the guest's own EL1 vector table.
 *
 * Each probe is one MTE instruction between a set-up and a RET, so a handler that
 * resumes at ELR + 4 skips exactly the probed instruction. The MRS/MSR probes use x1
 * as Rt on purpose: Rt is part of an EC 0x18 syndrome (ISS bits 9:5), and a fixed
 * register keeps the ESR the same whatever the compiler does around the call. MRS
 * probes clear x1 first, so a trapped read returns 0; MSR and STG probes return 0.
 *
 * The vector table replaces the runtime's (whose handler panics on anything but a
 * tag check fault) while the probes run: every entry records ESR_EL1, ELR_EL1,
 * FAR_EL1 and its own index in traps_last, counts the exception, and returns to the
 * instruction after the one that trapped. Interrupts are masked (start.S), so only
 * synchronous exceptions arrive.
 */

    .text
    .macro mrs_probe name, reg
    .global \name
    .type \name, %function
    .balign 8
\name:
    mov     x1, xzr
    mrs     x1, \reg
    mov     x0, x1
    ret
    .endm

    .macro msr_probe name, reg
    .global \name
    .type \name, %function
    .balign 8
\name:
    mov     x1, x0
    msr     \reg, x1
    mov     x0, xzr
    isb
    ret
    .endm

    mrs_probe traps_mrs_gcr, gcr_el1
    mrs_probe traps_mrs_rgsr, rgsr_el1
    mrs_probe traps_mrs_tfsr, tfsr_el1
    mrs_probe traps_mrs_tfsre0, tfsre0_el1
    mrs_probe traps_mrs_gmid, gmid_el1
    mrs_probe traps_mrs_pfr1, id_aa64pfr1_el1
    msr_probe traps_msr_gcr, gcr_el1
    msr_probe traps_msr_rgsr, rgsr_el1
    msr_probe traps_msr_tfsr, tfsr_el1
    msr_probe traps_msr_tfsre0, tfsre0_el1

/* uint64_t traps_irg(uint64_t ptr): IRG x0, x0 (no extra exclusions). */
    .global traps_irg
    .type traps_irg, %function
    .balign 8
traps_irg:
    nop
    irg     x0, x0
    ret

/* uint64_t traps_stg(uint64_t tagged_ptr): STG x0, [x0]; returns 0. */
    .global traps_stg
    .type traps_stg, %function
    .balign 8
traps_stg:
    nop
    stg     x0, [x0]
    mov     x0, xzr
    ret

/* uint64_t traps_ldg(uint64_t ptr): LDG x0, [x0]. */
    .global traps_ldg
    .type traps_ldg, %function
    .balign 8
traps_ldg:
    nop
    ldg     x0, [x0]
    ret

/* What the last exception was: struct traps_record in main.c. */
    .bss
    .balign 8
    .global traps_last
traps_last:
    .skip   5 * 8

    .text
    .macro entry kind
    .balign 0x80
    stp     x9, x10, [sp, #-16]!
    mov     x9, #\kind
    b       traps_handler
    .endm

    .balign 2048
    .global traps_vectors
traps_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    entry \kind
    .endr

traps_handler:
    adrp    x10, traps_last
    add     x10, x10, :lo12:traps_last
    str     x9, [x10, #24]          /* vector index */
    mrs     x9, esr_el1
    str     x9, [x10, #0]
    mrs     x9, elr_el1
    str     x9, [x10, #8]
    mrs     x9, far_el1
    str     x9, [x10, #16]
    ldr     x9, [x10, #32]
    add     x9, x9, #1
    str     x9, [x10, #32]          /* count */
    mrs     x9, elr_el1
    add     x9, x9, #4              /* skip the probed instruction */
    msr     elr_el1, x9
    ldp     x9, x10, [sp], #16
    eret
