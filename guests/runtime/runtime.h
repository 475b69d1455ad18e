/* The tagvisor guest runtime: boot, console, ucalls, faults, power off.
 *
 * Implements the guest side of docs/guest-abi.md. A program provides
 * `int main(void)`; the runtime has turned the MMU on (RAM Normal Tagged), set up MTE
 * from the boot configuration block, and reported BOOT and CPU before calling it.
 * main's return value is the exit status given to UCALL_DONE.
 */
#ifndef TAGVISOR_RUNTIME_H
#define TAGVISOR_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "reports.h"

/* --- the ABI ------------------------------------------------------------------ */

#define TV_UART_BASE 0x09000000UL
#define TV_UCALL_DOORBELL 0x0A000000UL
#define TV_RAM_BASE 0x40000000UL
#define TV_BOOT_CONFIG 0x40001000UL
#define TV_BOOT_MAGIC 0x47435654U /* "TVCG" */
#define TV_DEFAULT_RAM_SIZE (128UL << 20)
/* RGSR_EL1.SEED when the boot configuration does not give one. */
#define TV_DEFAULT_SEED 0xACE1U

enum { UCALL_SYNC = 1, UCALL_ASSERT = 2, UCALL_PRINT = 3, UCALL_DONE = 4 };
#define UCALL_MAX_ARGS 6

struct ucall {
    uint64_t cmd;
    uint64_t nargs;
    uint64_t args[UCALL_MAX_ARGS];
};

/* SCTLR_EL1.TCF values. */
enum tcf { TCF_NONE = 0, TCF_SYNC = 1, TCF_ASYNC = 2, TCF_ASYMM = 3 };

/* Exit statuses the runtime itself uses. */
#define TV_EXIT_OK 0
#define TV_EXIT_CHECKS_FAILED 1
#define TV_EXIT_NO_MTE 3
#define TV_EXIT_PANIC 255

/* What the runtime made of the boot configuration block (see guests/README.md). */
struct tv_boot {
    uint32_t valid;     /* the block had the magic */
    uint32_t version;
    uint32_t tcf;       /* tag check mode in effect at main() */
    uint32_t flags;
    uint64_t ram_size;
    uint64_t arg;       /* offset 24: program argument (0 when absent) */
    uint32_t seed;      /* offset 32: RGSR_EL1.SEED (TV_DEFAULT_SEED when 0 / absent) */
    uint32_t mte;       /* MTE is usable: ID_AA64PFR1_EL1.MTE >= 2 and, with a valid
                           block, flags bit 0 */
};
extern struct tv_boot tv_boot;

/* Linker symbols. */
extern char __image_start[], __image_end[];

/* --- console and ucalls ------------------------------------------------------- */

void tv_putc(char c);
void tv_puts(const char *s);
/* printf-lite: %x (uint64_t, hex, no 0x), %d (int64_t), %u, %s, %c, %%. */
void tv_printf(const char *fmt, ...);
void tv_vprintf(const char *fmt, va_list ap);

void tv_ucall(uint64_t cmd, unsigned nargs, const uint64_t *args);
/* UCALL_SYNC with args[0] = id and up to 5 values: tv_report(id, n, v1, ..., vn). */
void tv_report(uint64_t id, unsigned nvalues, ...);
/* Prints the string on the console, then UCALL_PRINT with its address. */
void tv_print(const char *s);
/* UCALL_ASSERT; counted in tv_failures. */
void tv_assert_failed(uint64_t line, uint64_t expected, uint64_t actual);
extern uint64_t tv_failures;

#define TV_CHECK_EQ(expected, actual)                                                 \
    do {                                                                              \
        uint64_t tv_e_ = (uint64_t)(expected), tv_a_ = (uint64_t)(actual);           \
        if (tv_e_ != tv_a_)                                                           \
            tv_assert_failed(__LINE__, tv_e_, tv_a_);                                 \
    } while (0)
#define TV_CHECK(cond) TV_CHECK_EQ(1, !!(cond))

/* UCALL_DONE(status), then PSCI SYSTEM_OFF. */
__attribute__((noreturn)) void tv_done(uint64_t status);
/* PSCI SYSTEM_OFF (HVC #0, x0 = 0x84000008). */
__attribute__((noreturn)) void tv_poweroff(void);
/* Prints `panic esr=.. far=.. elr=..`, then tv_done(255) (see tv_exception for FAR). */
__attribute__((noreturn)) void tv_panic(uint64_t esr, uint64_t far, uint64_t elr);

/* --- exceptions --------------------------------------------------------------- */

struct tv_frame {
    uint64_t x[31];
    uint64_t elr;
    uint64_t spsr;
    uint64_t pad;
};

/* Called for a synchronous tag check fault (ESR_EL1.EC 0x25, DFSC 0x11). Returns the
 * address to resume at, or 0 to panic. */
typedef uint64_t (*tv_fault_hook)(uint64_t esr, uint64_t far, struct tv_frame *frame);
void tv_set_fault_hook(tv_fault_hook hook);

/* The usual hook: record the fault and resume after the faulting instruction. */
struct tv_fault {
    uint64_t count;
    uint64_t esr;
    uint64_t far;
    uint64_t elr;
};
extern volatile struct tv_fault tv_last_fault;
uint64_t tv_record_and_skip(uint64_t esr, uint64_t far, struct tv_frame *frame);
/* Clears tv_last_fault and installs tv_record_and_skip. */
void tv_catch_faults(void);

#define ESR_EC(esr) (((esr) >> 26) & 0x3f)
#define ESR_EC_DABT_CUR 0x25
#define ESR_DFSC(esr) ((esr) & 0x3f)
#define DFSC_TAG_CHECK 0x11

/* --- accesses that a fault hook can skip (start.S) ----------------------------- */
/* Each is one load or store followed by RET: resuming at ELR + 4 abandons it. A
 * skipped load returns its address argument. */
uint64_t tv_load8(uint64_t ptr);
uint64_t tv_load16(uint64_t ptr);
uint64_t tv_load32(uint64_t ptr);
uint64_t tv_load64(uint64_t ptr);
void tv_store8(uint64_t ptr, uint64_t value);
void tv_store16(uint64_t ptr, uint64_t value);
void tv_store32(uint64_t ptr, uint64_t value);
void tv_store64(uint64_t ptr, uint64_t value);

/* --- MTE control -------------------------------------------------------------- */

void tv_set_tcf(enum tcf mode);
void tv_set_ata(int on);
void tv_set_tcma0(int on);
/* TFSR_EL1 after DSB NSH; ISB (which makes pending asynchronous faults visible). */
uint64_t tv_read_tfsr(void);
void tv_clear_tfsr(void);

/* --- freestanding C ----------------------------------------------------------- */

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

int main(void);

#endif
