/*
 * mteprobe: runs MTE instructions at EL0 from a script and prints what happened.
 *
 * Built by tests/oracle/qemu_probe.py with
 *   aarch64-linux-gnu-gcc -march=armv8.5-a+memtag -O1 -static -Wall -Wextra -Werror
 * and run under `qemu-aarch64 -cpu max`. It reads one command per line from stdin and
 * prints exactly one result line per command (blank lines and lines starting with '#'
 * are answered with "skip"), so one process runs a whole script.
 *
 * Memory: an arena of 3 * REGION anonymous bytes. Offsets [REGION, 2 * REGION) are
 * PROT_MTE (Normal Tagged); [0, REGION) and [2 * REGION, 3 * REGION) are not (untagged:
 * never tag checked, tags read as 0), so accesses can cross from untagged to tagged
 * pages and back. Commands name memory by an offset into the arena and the pointer's
 * top byte: ptr = (base + off) | top << 56.
 *
 * Results:
 *   ok <v...>                     the command completed (values in hex)
 *   sig <signo> <code> <addr> <where> <v...>
 *                                 a signal arrived while the command ran. <where> is
 *                                 "svc" if it was delivered on return from the
 *                                 getppid() that follows every access (an asynchronous
 *                                 tag check fault) and "insn" otherwise (a synchronous
 *                                 fault at the instruction itself). For loads the value
 *                                 that reached the register before the signal follows.
 *   err <text>                    the command was malformed or a syscall failed
 *
 * Commands (numbers in C syntax: 0x.. hex or decimal):
 *   base                          ok <arena base> <REGION>
 *   prctl <arg>                   PR_SET_TAGGED_ADDR_CTRL(arg): ok 0 | err <errno>
 *   getctrl                       ok <PR_GET_TAGGED_ADDR_CTRL>
 *   dczid                         ok <DCZID_EL0>
 *   irg <xn> <xm>                 ok <IRG result>
 *   gmi <xn> <xm>                 ok <GMI result>
 *   addg|subg <xn> <uimm6> <uimm4>  ok <result>
 *   stg|st2g|stzg|stz2g <off> <srctop> [<addrtop>]
 *                                 Xt = ptr with top byte srctop; Xn = ptr with addrtop
 *                                 (default srctop). ok 0 | sig ...
 *   stgp <off> <top> <d1> <d2>    STGP d1, d2, [ptr]
 *   ldg <off> <top> <xt>          ok <Xt after LDG Xt, [ptr]>
 *   dcgva|dcgzva|dczva <off> <top>  DC GVA / DC GZVA / DC ZVA on ptr
 *   ld <size> <off> <top> [tco]   load of 1, 2, 4, 8 or 16 bytes (LDRB/LDRH/LDR W/LDR X/
 *                                 LDR Q): ok <lo64> <hi64>. tco=1 sets PSTATE.TCO
 *                                 around the access (MSR TCO, #1 / #0).
 *   st <size> <off> <top> <value> [tco]  store (a 16-byte store writes value twice)
 *   ldgm|stgm|stzgm <off> <top>   the EL1-only bulk tag instructions
 *   peek <off> <len>              ok =<hex bytes> (read with PSTATE.TCO set, unchecked)
 *   fill <off> <len> <byte>       memset with PSTATE.TCO set
 *   tagfill <off> <len> <tag>     STG every granule of [off, off + len) with tag
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef PROT_MTE
#define PROT_MTE 0x20
#endif
#ifndef PR_SET_TAGGED_ADDR_CTRL
#define PR_SET_TAGGED_ADDR_CTRL 55
#define PR_GET_TAGGED_ADDR_CTRL 56
#endif

#define REGION (64 * 1024)
#define SVC_0 0xd4000001u
#define NR_GETPPID "173"

static uint8_t *arena;
static sigjmp_buf jump;
static volatile sig_atomic_t armed;
static volatile int sig_no, sig_code;
static volatile uintptr_t sig_addr;
static volatile int sig_at_svc;
/* Where an access stores the value it loaded, before the syscall that flushes async
 * faults: a signal at that syscall must not lose it. Untagged (.bss). */
static volatile uint64_t loaded[2];

static void on_signal(int signo, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    uint64_t pc = uc->uc_mcontext.pc;
    if (!armed) {
        /* Not inside a command: the probe itself is broken. */
        static const char msg[] = "fatal: signal outside a command\n";
        write(2, msg, sizeof msg - 1);
        _exit(3);
    }
    sig_no = signo;
    sig_code = info->si_code;
    sig_addr = (uintptr_t)info->si_addr;
    sig_at_svc = pc >= 4 && *(const uint32_t *)(uintptr_t)(pc - 4) == SVC_0;
    armed = 0;
    siglongjmp(jump, 1);
}

static uint64_t num(const char *s) {
    if (s == NULL) {
        return 0;
    }
    return strtoull(s, NULL, 0);
}

static int tokens_ok(char **tok, int need) {
    for (int i = 0; i < need; i++) {
        if (tok[i] == NULL) {
            return 0;
        }
    }
    return 1;
}

static int range_ok(uint64_t off, uint64_t len) {
    return off <= 3 * REGION && len <= 3 * REGION - off;
}

static uint64_t pointer(uint64_t off, uint64_t top) {
    return ((uint64_t)(uintptr_t)arena + off) | (top << 56);
}

/* ---- register-only instructions -------------------------------------------------- */

static uint64_t do_irg(uint64_t xn, uint64_t xm) {
    uint64_t r;
    asm volatile("irg %0, %1, %2" : "=r"(r) : "r"(xn), "r"(xm));
    return r;
}

static uint64_t do_gmi(uint64_t xn, uint64_t xm) {
    uint64_t r;
    asm volatile("gmi %0, %1, %2" : "=r"(r) : "r"(xn), "r"(xm));
    return r;
}

/* ADDG/SUBG take both offsets as immediates: one case per (uimm6, uimm4). */
#define ADDSUBG_CASE(op, i6, i4)                                                        \
    case ((i6) << 4 | (i4)):                                                            \
        asm volatile(op " %0, %1, #%2, #%3" : "=r"(r) : "r"(xn), "i"((i6) * 16), "i"(i4)); \
        break;
#define ADDSUBG_ROW(op, i6)                                                             \
    ADDSUBG_CASE(op, i6, 0) ADDSUBG_CASE(op, i6, 1) ADDSUBG_CASE(op, i6, 2)             \
    ADDSUBG_CASE(op, i6, 3) ADDSUBG_CASE(op, i6, 4) ADDSUBG_CASE(op, i6, 5)             \
    ADDSUBG_CASE(op, i6, 6) ADDSUBG_CASE(op, i6, 7) ADDSUBG_CASE(op, i6, 8)             \
    ADDSUBG_CASE(op, i6, 9) ADDSUBG_CASE(op, i6, 10) ADDSUBG_CASE(op, i6, 11)           \
    ADDSUBG_CASE(op, i6, 12) ADDSUBG_CASE(op, i6, 13) ADDSUBG_CASE(op, i6, 14)          \
    ADDSUBG_CASE(op, i6, 15)
#define ADDSUBG_8ROWS(op, b)                                                            \
    ADDSUBG_ROW(op, (b) + 0) ADDSUBG_ROW(op, (b) + 1) ADDSUBG_ROW(op, (b) + 2)          \
    ADDSUBG_ROW(op, (b) + 3) ADDSUBG_ROW(op, (b) + 4) ADDSUBG_ROW(op, (b) + 5)          \
    ADDSUBG_ROW(op, (b) + 6) ADDSUBG_ROW(op, (b) + 7)
#define ADDSUBG_ALL(op)                                                                 \
    ADDSUBG_8ROWS(op, 0) ADDSUBG_8ROWS(op, 8) ADDSUBG_8ROWS(op, 16)                     \
    ADDSUBG_8ROWS(op, 24) ADDSUBG_8ROWS(op, 32) ADDSUBG_8ROWS(op, 40)                   \
    ADDSUBG_8ROWS(op, 48) ADDSUBG_8ROWS(op, 56)

static uint64_t do_addg(uint64_t xn, unsigned which) {
    uint64_t r = 0;
    switch (which) { ADDSUBG_ALL("addg") }
    return r;
}

static uint64_t do_subg(uint64_t xn, unsigned which) {
    uint64_t r = 0;
    switch (which) { ADDSUBG_ALL("subg") }
    return r;
}

/* ---- memory instructions ----------------------------------------------------------
 * Each runs inside sigsetjmp/armed and is followed, in the same asm block, by a
 * getppid() syscall: QEMU reports an asynchronous tag check fault when the CPU loop
 * next runs (at the latest that syscall), so SEGV_MTEAERR lands on this command. */

#define FLUSH "\n\tmov x8, #" NR_GETPPID "\n\tsvc #0"
#define FLUSH_CLOBBERS "x0", "x8", "memory"

static void do_tagstore(const char *op, uint64_t xt, uint64_t xn) {
    if (!strcmp(op, "stg")) {
        asm volatile("stg %0, [%1]" FLUSH : : "r"(xt), "r"(xn) : FLUSH_CLOBBERS);
    } else if (!strcmp(op, "st2g")) {
        asm volatile("st2g %0, [%1]" FLUSH : : "r"(xt), "r"(xn) : FLUSH_CLOBBERS);
    } else if (!strcmp(op, "stzg")) {
        asm volatile("stzg %0, [%1]" FLUSH : : "r"(xt), "r"(xn) : FLUSH_CLOBBERS);
    } else {
        asm volatile("stz2g %0, [%1]" FLUSH : : "r"(xt), "r"(xn) : FLUSH_CLOBBERS);
    }
}

static void do_load(unsigned size, uint64_t p, int tco) {
    volatile uint64_t *out = loaded;
    if (tco) {
        asm volatile("msr tco, #1" ::: "memory");
    }
    switch (size) {
    case 1:
        asm volatile("ldrb w9, [%0]\n\tstr x9, [%1]" FLUSH : : "r"(p), "r"(out)
                     : "x9", FLUSH_CLOBBERS);
        break;
    case 2:
        asm volatile("ldrh w9, [%0]\n\tstr x9, [%1]" FLUSH : : "r"(p), "r"(out)
                     : "x9", FLUSH_CLOBBERS);
        break;
    case 4:
        asm volatile("ldr w9, [%0]\n\tstr x9, [%1]" FLUSH : : "r"(p), "r"(out)
                     : "x9", FLUSH_CLOBBERS);
        break;
    case 8:
        asm volatile("ldr x9, [%0]\n\tstr x9, [%1]" FLUSH : : "r"(p), "r"(out)
                     : "x9", FLUSH_CLOBBERS);
        break;
    default:
        asm volatile("ldr q9, [%0]\n\tstr q9, [%1]" FLUSH : : "r"(p), "r"(out)
                     : "v9", FLUSH_CLOBBERS);
        break;
    }
    if (tco) {
        asm volatile("msr tco, #0" ::: "memory");
    }
}

static void do_store(unsigned size, uint64_t p, uint64_t v, int tco) {
    if (tco) {
        asm volatile("msr tco, #1" ::: "memory");
    }
    switch (size) {
    case 1:
        asm volatile("strb %w0, [%1]" FLUSH : : "r"(v), "r"(p) : FLUSH_CLOBBERS);
        break;
    case 2:
        asm volatile("strh %w0, [%1]" FLUSH : : "r"(v), "r"(p) : FLUSH_CLOBBERS);
        break;
    case 4:
        asm volatile("str %w0, [%1]" FLUSH : : "r"(v), "r"(p) : FLUSH_CLOBBERS);
        break;
    case 8:
        asm volatile("str %0, [%1]" FLUSH : : "r"(v), "r"(p) : FLUSH_CLOBBERS);
        break;
    default:
        asm volatile("fmov d9, %0\n\tmov v9.d[1], %0\n\tstr q9, [%1]" FLUSH
                     : : "r"(v), "r"(p) : "v9", FLUSH_CLOBBERS);
        break;
    }
    if (tco) {
        asm volatile("msr tco, #0" ::: "memory");
    }
}

/* LDGM / STGM / STZGM (Xt = 0 for the stores). UNDEFINED at EL0. */
static __attribute__((noinline)) uint64_t do_bulk(const char *op, uint64_t p) {
    uint64_t xt = 0;
    if (!strcmp(op, "ldgm")) {
        asm volatile("ldgm %0, [%1]" FLUSH : "+r"(xt) : "r"(p) : FLUSH_CLOBBERS);
    } else if (!strcmp(op, "stgm")) {
        asm volatile("stgm %0, [%1]" FLUSH : : "r"(xt), "r"(p) : FLUSH_CLOBBERS);
    } else {
        asm volatile("stzgm %0, [%1]" FLUSH : : "r"(xt), "r"(p) : FLUSH_CLOBBERS);
    }
    return xt;
}

/* ---- the command loop --------------------------------------------------------------- */

#define MAXTOK 8

static void report_signal(int is_load) {
    printf("sig %d %d 0x%llx %s", sig_no, sig_code, (unsigned long long)sig_addr,
           sig_at_svc ? "svc" : "insn");
    if (is_load) {
        printf(" 0x%llx 0x%llx", (unsigned long long)loaded[0], (unsigned long long)loaded[1]);
    }
    printf("\n");
}

static void run(char **tok) {
    const char *op = tok[0];
    /* Commands that cannot fault. */
    if (!strcmp(op, "base")) {
        printf("ok 0x%llx 0x%x\n", (unsigned long long)(uintptr_t)arena, REGION);
        return;
    }
    if (!strcmp(op, "prctl") && tokens_ok(tok, 2)) {
        int rc = prctl(PR_SET_TAGGED_ADDR_CTRL, (unsigned long)num(tok[1]), 0, 0, 0);
        if (rc < 0) {
            printf("err %d\n", errno);
        } else {
            printf("ok %d\n", rc);
        }
        return;
    }
    if (!strcmp(op, "getctrl")) {
        long rc = prctl(PR_GET_TAGGED_ADDR_CTRL, 0, 0, 0, 0);
        printf("ok 0x%lx\n", rc);
        return;
    }
    if (!strcmp(op, "dczid")) {
        uint64_t v;
        asm volatile("mrs %0, dczid_el0" : "=r"(v));
        printf("ok 0x%llx\n", (unsigned long long)v);
        return;
    }
    if ((!strcmp(op, "irg") || !strcmp(op, "gmi")) && tokens_ok(tok, 3)) {
        uint64_t xn = num(tok[1]), xm = num(tok[2]);
        uint64_t r = op[0] == 'i' ? do_irg(xn, xm) : do_gmi(xn, xm);
        printf("ok 0x%llx\n", (unsigned long long)r);
        return;
    }
    if ((!strcmp(op, "addg") || !strcmp(op, "subg")) && tokens_ok(tok, 4)) {
        uint64_t xn = num(tok[1]), i6 = num(tok[2]), i4 = num(tok[3]);
        if (i6 > 63 || i4 > 15) {
            printf("err immediate\n");
            return;
        }
        unsigned which = (unsigned)(i6 << 4 | i4);
        uint64_t r = op[0] == 'a' ? do_addg(xn, which) : do_subg(xn, which);
        printf("ok 0x%llx\n", (unsigned long long)r);
        return;
    }
    if (!strcmp(op, "peek") && tokens_ok(tok, 3)) {
        uint64_t off = num(tok[1]), len = num(tok[2]);
        if (!range_ok(off, len)) {
            printf("err range\n");
            return;
        }
        printf("ok =");
        asm volatile("msr tco, #1" ::: "memory");
        for (uint64_t i = 0; i < len; i++) {
            printf("%02x", ((volatile uint8_t *)arena)[off + i]);
        }
        asm volatile("msr tco, #0" ::: "memory");
        printf("\n");
        return;
    }
    if (!strcmp(op, "fill") && tokens_ok(tok, 4)) {
        uint64_t off = num(tok[1]), len = num(tok[2]), byte = num(tok[3]);
        if (!range_ok(off, len)) {
            printf("err range\n");
            return;
        }
        asm volatile("msr tco, #1" ::: "memory");
        for (uint64_t i = 0; i < len; i++) {
            ((volatile uint8_t *)arena)[off + i] = (uint8_t)byte;
        }
        asm volatile("msr tco, #0" ::: "memory");
        printf("ok 0\n");
        return;
    }
    if (!strcmp(op, "tagfill") && tokens_ok(tok, 4)) {
        uint64_t off = num(tok[1]), len = num(tok[2]), tag = num(tok[3]);
        if (!range_ok(off, len) || off % 16 || len % 16) {
            printf("err range\n");
            return;
        }
        for (uint64_t i = 0; i < len; i += 16) {
            uint64_t p = pointer(off + i, tag);
            asm volatile("stg %0, [%0]" : : "r"(p) : "memory");
        }
        printf("ok 0\n");
        return;
    }

    /* Commands that may fault: run under sigsetjmp. */
    int is_load = 0;
    uint64_t result = 0;
    loaded[0] = loaded[1] = 0;
    if (sigsetjmp(jump, 1)) {
        asm volatile("msr tco, #0" ::: "memory");
        report_signal(!strcmp(op, "ld"));
        return;
    }
    if ((!strcmp(op, "stg") || !strcmp(op, "st2g") || !strcmp(op, "stzg") ||
         !strcmp(op, "stz2g")) &&
        tokens_ok(tok, 3)) {
        uint64_t off = num(tok[1]), src = num(tok[2]);
        uint64_t top = tok[3] ? num(tok[3]) : src;
        if (!range_ok(off, 32)) {
            printf("err range\n");
            return;
        }
        armed = 1;
        do_tagstore(op, pointer(off, src), pointer(off, top));
    } else if (!strcmp(op, "stgp") && tokens_ok(tok, 5)) {
        uint64_t off = num(tok[1]), p, d1 = num(tok[3]), d2 = num(tok[4]);
        if (!range_ok(off, 16)) {
            printf("err range\n");
            return;
        }
        p = pointer(off, num(tok[2]));
        armed = 1;
        asm volatile("stgp %0, %1, [%2]" FLUSH : : "r"(d1), "r"(d2), "r"(p) : FLUSH_CLOBBERS);
    } else if (!strcmp(op, "ldg") && tokens_ok(tok, 4)) {
        uint64_t off = num(tok[1]), p, xt = num(tok[3]);
        if (!range_ok(off, 1)) {
            printf("err range\n");
            return;
        }
        p = pointer(off, num(tok[2]));
        armed = 1;
        asm volatile("ldg %0, [%1]" FLUSH : "+r"(xt) : "r"(p) : FLUSH_CLOBBERS);
        result = xt;
    } else if ((!strcmp(op, "dcgva") || !strcmp(op, "dcgzva") || !strcmp(op, "dczva")) &&
               tokens_ok(tok, 3)) {
        uint64_t off = num(tok[1]), p;
        if (!range_ok(off, 1)) {
            printf("err range\n");
            return;
        }
        p = pointer(off, num(tok[2]));
        armed = 1;
        if (!strcmp(op, "dcgva")) {
            asm volatile("dc gva, %0" FLUSH : : "r"(p) : FLUSH_CLOBBERS);
        } else if (!strcmp(op, "dcgzva")) {
            asm volatile("dc gzva, %0" FLUSH : : "r"(p) : FLUSH_CLOBBERS);
        } else {
            asm volatile("dc zva, %0" FLUSH : : "r"(p) : FLUSH_CLOBBERS);
        }
    } else if ((!strcmp(op, "ld") || !strcmp(op, "st")) && tokens_ok(tok, 4)) {
        unsigned size = (unsigned)num(tok[1]);
        uint64_t off = num(tok[2]), p = pointer(off, num(tok[3]));
        int store = op[0] == 's';
        if (store && !tokens_ok(tok, 5)) {
            printf("err args\n");
            return;
        }
        int tco = (int)num(tok[store ? 5 : 4]);
        if (size != 1 && size != 2 && size != 4 && size != 8 && size != 16) {
            printf("err size\n");
            return;
        }
        if (!range_ok(off, size)) {
            printf("err range\n");
            return;
        }
        armed = 1;
        if (store) {
            do_store(size, p, num(tok[4]), tco);
        } else {
            is_load = 1;
            do_load(size, p, tco);
        }
    } else if ((!strcmp(op, "ldgm") || !strcmp(op, "stgm") || !strcmp(op, "stzgm")) &&
               tokens_ok(tok, 3)) {
        uint64_t off = num(tok[1]), p;
        if (!range_ok(off, 256)) {
            printf("err range\n");
            return;
        }
        p = pointer(off, num(tok[2]));
        armed = 1;
        result = do_bulk(op, p);
    } else {
        printf("err unknown command %s\n", op);
        return;
    }
    armed = 0;
    if (is_load) {
        printf("ok 0x%llx 0x%llx\n", (unsigned long long)loaded[0],
               (unsigned long long)loaded[1]);
    } else {
        printf("ok 0x%llx\n", (unsigned long long)result);
    }
}

int main(void) {
    static char line[4096];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);

    void *m = mmap(NULL, 3 * REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    if (mprotect((char *)m + REGION, REGION, PROT_READ | PROT_WRITE | PROT_MTE) != 0) {
        perror("mprotect PROT_MTE");
        return 2;
    }
    arena = m;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);

    while (fgets(line, sizeof line, stdin)) {
        char *tok[MAXTOK + 1] = {0};
        int n = 0;
        for (char *t = strtok(line, " \t\r\n"); t && n < MAXTOK; t = strtok(NULL, " \t\r\n")) {
            tok[n++] = t;
        }
        if (n == 0 || tok[0][0] == '#') {
            printf("skip\n");
            continue;
        }
        run(tok);
    }
    fflush(stdout);
    return 0;
}
