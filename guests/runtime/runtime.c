/* The C half of the runtime: boot configuration, MTE set-up, console, ucalls,
 * exceptions. See runtime.h and docs/guest-abi.md. */

#include "runtime.h"

#include "mte.h"

/* SCTLR_EL1 fields the runtime changes (Arm ARM D19). */
#define SCTLR_TCF_SHIFT 40
#define SCTLR_TCF_MASK (3UL << SCTLR_TCF_SHIFT)
#define SCTLR_ATA (1UL << 43)
#define TCR_TCMA0 (1UL << 57)
/* GCR_EL1: Exclude = tag 0 (IRG never picks it), RRND = 0 (the architected LFSR). */
#define GCR_VALUE 0x1UL

#define UARTDR 0x000
#define UARTFR 0x018
#define UARTFR_TXFF (1U << 5)

struct tv_boot tv_boot;
uint64_t tv_failures;
volatile struct tv_fault tv_last_fault;
static tv_fault_hook fault_hook;
static struct ucall ucall_slot __attribute__((aligned(8)));

extern char __bss_start[], __bss_end[];

/* --- freestanding C ----------------------------------------------------------- */

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    uint64_t word = 0x0101010101010101UL * (unsigned char)c;
    while (n && ((uint64_t)d & 7)) {
        *d++ = (unsigned char)c;
        n--;
    }
    for (; n >= 8; n -= 8, d += 8)
        *(uint64_t *)d = word;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

/* --- console ------------------------------------------------------------------ */

static inline void mmio_write32(uint64_t addr, uint32_t value)
{
    *(volatile uint32_t *)addr = value;
}

static inline uint32_t mmio_read32(uint64_t addr) { return *(volatile uint32_t *)addr; }

void tv_putc(char c)
{
    while (mmio_read32(TV_UART_BASE + UARTFR) & UARTFR_TXFF)
        ;
    mmio_write32(TV_UART_BASE + UARTDR, (unsigned char)c);
}

void tv_puts(const char *s)
{
    while (*s)
        tv_putc(*s++);
}

static void put_hex(uint64_t v)
{
    char buf[16];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v & 0xF];
        v >>= 4;
    } while (v);
    while (n)
        tv_putc(buf[--n]);
}

static void put_dec(uint64_t v)
{
    char buf[20];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        tv_putc(buf[--n]);
}

void tv_vprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            tv_putc(*fmt);
            continue;
        }
        switch (*++fmt) {
        case 'x':
            put_hex(va_arg(ap, uint64_t));
            break;
        case 'u':
            put_dec(va_arg(ap, uint64_t));
            break;
        case 'd': {
            int64_t v = va_arg(ap, int64_t);
            if (v < 0) {
                tv_putc('-');
                put_dec(-(uint64_t)v);
            } else {
                put_dec((uint64_t)v);
            }
            break;
        }
        case 's':
            tv_puts(va_arg(ap, const char *));
            break;
        case 'c':
            tv_putc((char)va_arg(ap, int));
            break;
        case '%':
            tv_putc('%');
            break;
        case '\0':
            return;
        default:
            tv_putc('%');
            tv_putc(*fmt);
        }
    }
}

void tv_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tv_vprintf(fmt, ap);
    va_end(ap);
}

/* --- ucalls ------------------------------------------------------------------- */

void tv_ucall(uint64_t cmd, unsigned nargs, const uint64_t *args)
{
    if (nargs > UCALL_MAX_ARGS)
        nargs = UCALL_MAX_ARGS;
    ucall_slot.cmd = cmd;
    ucall_slot.nargs = nargs;
    tv_puts("ucall ");
    put_hex(cmd);
    for (unsigned i = 0; i < UCALL_MAX_ARGS; i++) {
        ucall_slot.args[i] = i < nargs ? args[i] : 0;
        if (i < nargs) {
            tv_putc(' ');
            put_hex(args[i]);
        }
    }
    tv_putc('\n');
    /* The doorbell: one 8-byte store of the struct's guest-physical address (the map
     * is the identity). The DSB orders the struct's stores before it. */
    dsb(sy);
    *(volatile uint64_t *)TV_UCALL_DOORBELL = (uint64_t)&ucall_slot;
    dsb(sy);
}

void tv_report(uint64_t id, unsigned nvalues, ...)
{
    uint64_t args[UCALL_MAX_ARGS];
    va_list ap;
    if (nvalues > UCALL_MAX_ARGS - 1)
        nvalues = UCALL_MAX_ARGS - 1;
    args[0] = id;
    va_start(ap, nvalues);
    for (unsigned i = 0; i < nvalues; i++)
        args[1 + i] = va_arg(ap, uint64_t);
    va_end(ap);
    tv_ucall(UCALL_SYNC, 1 + nvalues, args);
}

void tv_print(const char *s)
{
    uint64_t arg = (uint64_t)s;
    tv_puts(s);
    tv_putc('\n');
    tv_ucall(UCALL_PRINT, 1, &arg);
}

void tv_assert_failed(uint64_t line, uint64_t expected, uint64_t actual)
{
    uint64_t args[3] = {line, expected, actual};
    tv_failures++;
    tv_ucall(UCALL_ASSERT, 3, args);
}

void tv_done(uint64_t status)
{
    tv_ucall(UCALL_DONE, 1, &status);
    tv_poweroff();
}

void tv_panic(uint64_t esr, uint64_t far, uint64_t elr)
{
    tv_printf("panic esr=%x far=%x elr=%x\n", esr, far, elr);
    tv_done(TV_EXIT_PANIC);
}

/* --- exceptions --------------------------------------------------------------- */

void tv_set_fault_hook(tv_fault_hook hook) { fault_hook = hook; }

uint64_t tv_record_and_skip(uint64_t esr, uint64_t far, struct tv_frame *frame)
{
    tv_last_fault.count++;
    tv_last_fault.esr = esr;
    tv_last_fault.far = far;
    tv_last_fault.elr = frame->elr;
    return frame->elr + 4;
}

void tv_catch_faults(void)
{
    tv_last_fault.count = 0;
    tv_last_fault.esr = 0;
    tv_last_fault.far = 0;
    tv_last_fault.elr = 0;
    tv_set_fault_hook(tv_record_and_skip);
}

/* Whether FAR_EL1 is valid for a synchronous exception with this class: instruction
 * and data aborts, PC alignment faults and watchpoints. For the others it is UNKNOWN,
 * and the panic line shows 0 so that transcripts from different implementations of
 * the architecture compare equal. */
static int far_is_valid(uint64_t ec)
{
    return (ec >= 0x20 && ec <= 0x22) || ec == 0x24 || ec == 0x25 || ec == 0x34 || ec == 0x35;
}

/* Called by the vectors in start.S with PSTATE.TCO set (the entry sets it). */
void tv_exception(uint64_t kind, struct tv_frame *frame)
{
    uint64_t esr = read_sysreg(esr_el1);
    uint64_t far = far_is_valid(ESR_EC(esr)) ? read_sysreg(far_el1) : 0;
    if (kind == 4 && ESR_EC(esr) == ESR_EC_DABT_CUR && ESR_DFSC(esr) == DFSC_TAG_CHECK &&
        fault_hook) {
        uint64_t resume = fault_hook(esr, far, frame);
        if (resume) {
            frame->elr = resume;
            return;
        }
    }
    if (kind != 0 && kind != 4 && kind != 8 && kind != 12) {
        /* An IRQ, FIQ or SError: ESR_EL1 (and FAR_EL1) do not describe it. */
        tv_printf("unexpected exception vector %x\n", kind);
        tv_panic(0, 0, frame->elr);
    }
    tv_panic(esr, far, frame->elr);
}

/* --- MTE control -------------------------------------------------------------- */

void tv_set_tcf(enum tcf mode)
{
    uint64_t sctlr = read_sysreg(sctlr_el1) & ~SCTLR_TCF_MASK;
    write_sysreg(sctlr_el1, sctlr | ((uint64_t)mode << SCTLR_TCF_SHIFT));
    isb();
}

void tv_set_ata(int on)
{
    uint64_t sctlr = read_sysreg(sctlr_el1) & ~SCTLR_ATA;
    write_sysreg(sctlr_el1, sctlr | (on ? SCTLR_ATA : 0));
    isb();
}

void tv_set_tcma0(int on)
{
    uint64_t tcr = read_sysreg(tcr_el1) & ~TCR_TCMA0;
    write_sysreg(tcr_el1, tcr | (on ? TCR_TCMA0 : 0));
    isb();
    __asm__ volatile("tlbi vmalle1" : : : "memory");
    dsb(nsh);
    isb();
}

uint64_t tv_read_tfsr(void)
{
    dsb(nsh);
    isb();
    return read_sysreg(tfsr_el1);
}

void tv_clear_tfsr(void)
{
    write_sysreg(tfsr_el1, 0);
    isb();
}

/* --- boot --------------------------------------------------------------------- */

static uint32_t config_u32(unsigned offset)
{
    return *(volatile uint32_t *)(TV_BOOT_CONFIG + offset);
}

static uint64_t config_u64(unsigned offset)
{
    return *(volatile uint64_t *)(TV_BOOT_CONFIG + offset);
}

static void read_boot_config(void)
{
    tv_boot.tcf = TCF_SYNC;
    tv_boot.ram_size = TV_DEFAULT_RAM_SIZE;
    tv_boot.seed = TV_DEFAULT_SEED;
    if (config_u32(0) != TV_BOOT_MAGIC)
        return;
    tv_boot.valid = 1;
    tv_boot.version = config_u32(4);
    tv_boot.tcf = config_u32(8) <= TCF_ASYMM ? config_u32(8) : TCF_SYNC;
    tv_boot.flags = config_u32(12);
    if (config_u64(16))
        tv_boot.ram_size = config_u64(16);
    tv_boot.arg = config_u64(24);
    if (config_u32(32) & 0xFFFF)
        tv_boot.seed = config_u32(32) & 0xFFFF;
}

void tv_start_c(void)
{
    memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
    read_boot_config();

    uint64_t mte_field = (read_sysreg(id_aa64pfr1_el1) >> 8) & 0xF;
    tv_boot.mte = mte_field >= 2 && (!tv_boot.valid || (tv_boot.flags & 1));
    if (tv_boot.mte && tv_boot.tcf == TCF_ASYMM && mte_field < 3)
        tv_boot.tcf = TCF_SYNC; /* asymmetric checking is FEAT_MTE3; TCF 3 is reserved */
    if (tv_boot.mte) {
        __asm__ volatile("msr tco, #0");
        write_sysreg(gcr_el1, GCR_VALUE);
        write_sysreg(rgsr_el1, (uint64_t)tv_boot.seed << 8);
        write_sysreg(tfsr_el1, 0);
        tv_set_tcf((enum tcf)tv_boot.tcf);
        tv_set_ata(1);
    } else {
        tv_boot.tcf = TCF_NONE;
    }

    tv_report(REPORT_BOOT, 5, (uint64_t)tv_boot.valid, (uint64_t)tv_boot.tcf,
              (uint64_t)tv_boot.flags, tv_boot.ram_size, (uint64_t)tv_boot.seed);
    tv_report(REPORT_CPU, 4, mte_field, tv_boot.mte ? read_sysreg(gmid_el1) : 0,
              read_sysreg(dczid_el0), (uint64_t)tv_boot.mte);

    tv_done((uint64_t)main());
}
