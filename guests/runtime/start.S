/* Entry, exception vectors, power off and the skippable accesses of the runtime.
 *
 * The VCPU enters _start in EL1h with the MMU and caches off (docs/guest-abi.md). The
 * stage-1 MMU goes on here, before any C runs: with it off, data accesses are
 * Device-nGnRnE (no unaligned accesses, no tags). MAIR, TCR and the level-1 table are
 * the ones the ABI names. MTE itself (ATA, TCF, GCR, RGSR) is set up in C once the ID
 * registers and the boot configuration have been read.
 */

#define MAIR_VALUE 0xF000            /* attr 0: Device-nGnRnE, attr 1: Normal Tagged */
#define TCR_VALUE 0x2000803519       /* T0SZ 25, 4K, IS WB WA, EPD1, TBI0 */
/* SCTLR_EL1: RES1 bits (29, 28, 23, 22, 20, 11) | I (12) | C (2) | M (0). */
#define SCTLR_MMU_ON 0x30D01805

    .section .text.boot, "ax"
    .global _start
_start:
    msr     daifset, #0xf
    adrp    x0, tv_vectors
    add     x0, x0, :lo12:tv_vectors
    msr     vbar_el1, x0
    adrp    x0, __stack_top
    add     x0, x0, :lo12:__stack_top
    mov     sp, x0

    mov     x0, #MAIR_VALUE
    msr     mair_el1, x0
    ldr     x0, =TCR_VALUE
    msr     tcr_el1, x0
    adrp    x0, tv_l1_table
    msr     ttbr0_el1, x0
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x0, =SCTLR_MMU_ON
    msr     sctlr_el1, x0
    isb

    bl      tv_start_c
    b       tv_poweroff

/* PSCI SYSTEM_OFF through the hypervisor call conduit. */
    .text
    .global tv_poweroff
    .type tv_poweroff, %function
tv_poweroff:
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16
    hvc     #0
1:  wfi
    b       1b

/* One access and a return: a fault hook resumes at ELR + 4 (the RET). */
    .macro access name, insn, reg
    .global \name
    .type \name, %function
\name:
    \insn   \reg, [x0]
    ret
    .endm
    access  tv_load8, ldrb, w0
    access  tv_load16, ldrh, w0
    access  tv_load32, ldr, w0
    access  tv_load64, ldr, x0
    access  tv_store8, strb, w1
    access  tv_store16, strh, w1
    access  tv_store32, str, w1
    access  tv_store64, str, x1

/* Exception vectors: 16 entries of 0x80 bytes. Each saves x0/x1, puts its index
 * (0-3 current EL SP0, 4-7 current EL SPx, 8-15 lower ELs; sync, IRQ, FIQ, SError
 * in each group) in x0 and joins tv_exception_common. */
#define FRAME_SIZE (34 * 8)

    .macro vector kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       tv_exception_common
    .endm

    .balign 2048
    .global tv_vectors
tv_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    vector \kind
    .endr

tv_exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x30, x2, [sp, #240]
    str     x3, [sp, #256]
    mov     x1, sp
    bl      tv_exception            /* (kind, frame): may change frame->elr */
    ldp     x30, x2, [sp, #240]
    ldr     x3, [sp, #256]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #FRAME_SIZE
    eret

/* The level-1 translation table: 512 entries of 1 GiB blocks (T0SZ 25 starts the walk
 * at level 1). Block descriptor: bits 1:0 = 01, AttrIndx 4:2, SH 9:8, AF 10,
 * PXN 53, UXN 54. */
    .section .data.tables, "aw"
    .balign 4096
    .global tv_l1_table
tv_l1_table:
    /* 0x0000_0000: Device-nGnRnE (attr 0), AF, PXN, UXN: the MMIO of the virt board. */
    .quad   0x0060000000000401
    /* 0x4000_0000: Normal Tagged (attr 1), inner shareable, AF, UXN: RAM. */
    .quad   0x0040000040000705
    .fill   510, 8, 0
