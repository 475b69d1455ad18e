/* Report ids: args[0] of every UCALL_SYNC the guests make. The values after the id are
 * listed beside each. guests/README.md explains them; tests/support/guest_reports.py
 * mirrors this file (a test keeps the two equal). */
#ifndef TAGVISOR_REPORTS_H
#define TAGVISOR_REPORTS_H

/* runtime, before main() */
#define REPORT_BOOT 0x001 /* config valid, tcf, flags, ram size, IRG seed */
#define REPORT_CPU 0x002  /* ID_AA64PFR1_EL1.MTE, GMID_EL1, DCZID_EL0, MTE usable */

/* mte-smoke */
#define REPORT_SMOKE_ARENA 0x100     /* base, size */
#define REPORT_SMOKE_IRG_START 0x110 /* RGSR_EL1, GCR_EL1 */
#define REPORT_SMOKE_IRG 0x111       /* index, Xn, Xm, result, RGSR_EL1 after */
#define REPORT_SMOKE_ADDG 0x120      /* case, Xn, result */
#define REPORT_SMOKE_SUBG 0x121      /* case, Xn, result */
#define REPORT_SMOKE_GMI 0x122       /* case, Xn, Xm, result */
#define REPORT_SMOKE_STG 0x130       /* pointer, LDG of its granule, LDG of the next */
#define REPORT_SMOKE_ST2G 0x131      /* pointer, LDG +0, +16, +32 */
#define REPORT_SMOKE_STGP 0x132      /* pointer, LDG, data word 0, data word 1 */
#define REPORT_SMOKE_STZG 0x133      /* pointer, LDG, data at +0, data at +16 */
#define REPORT_SMOKE_STZ2G 0x134     /* pointer, LDG +0, LDG +16, data at +24, at +32 */
#define REPORT_SMOKE_STGM 0x140      /* address, Xt, tags of 16 granules by LDG, tag of 17th */
#define REPORT_SMOKE_LDGM 0x141      /* address, result */
#define REPORT_SMOKE_STZGM 0x142     /* address, LDGM words of the 1 KiB window */
#define REPORT_SMOKE_STZGM_DATA 0x143 /* address, first zero byte, zero bytes (window) */
#define REPORT_SMOKE_DC_GVA 0x150    /* pointer, LDGM words of the 1 KiB window */
#define REPORT_SMOKE_DC_GZVA 0x151   /* pointer, LDGM words of the 1 KiB window */
#define REPORT_SMOKE_DC_GZVA_DATA 0x152 /* pointer, first zero byte, zero bytes (window) */
#define REPORT_SMOKE_TCMA 0x160      /* case, pointer, ESR, FAR, value */
#define REPORT_SMOKE_ATA_OFF 0x170   /* LDG, IRG, RGSR before, RGSR after, load ESR */
#define REPORT_SMOKE_ATA_ON 0x171    /* LDG after ATA is back, data word STGP wrote */
#define REPORT_SMOKE_ATA_ADDG 0x172  /* Xn, ADDG #16, #1 result while ATA was off */

/* heap */
#define REPORT_HEAP_INIT 0x200      /* arena base, arena size, size classes, tcf */
#define REPORT_HEAP_ALLOC 0x201     /* index, pointer, size, exclude mask used */
#define REPORT_HEAP_FREE 0x202      /* index, pointer, tag after the free, exclude mask used */
#define REPORT_HEAP_UAF 0x210       /* pointer, ESR, FAR, TFSR_EL1 */
#define REPORT_HEAP_OVERFLOW 0x211  /* pointer, ESR, FAR, TFSR_EL1 */
#define REPORT_HEAP_UNDERFLOW 0x212 /* pointer, ESR, FAR, TFSR_EL1 */
#define REPORT_HEAP_DOUBLE_FREE 0x213 /* pointer, refused */
#define REPORT_HEAP_SUMMARY 0x220   /* synchronous faults, TFSR hits, tcf */

/* churn */
#define REPORT_CHURN_INIT 0x300  /* region base, region size, rounds, seed */
#define REPORT_CHURN_ROUND 0x301 /* round, live allocations, heap sum, region sum, TFSR */

/* kvm-probe */
#define REPORT_PROBE_PAGE 0x600      /* page, first granule's tag, last granule's tag, data word */
#define REPORT_PROBE_LOG_RESET 0x610 /* (none): the VMM reads and clears the dirty log */
#define REPORT_PROBE_LOG_READ 0x611  /* (none): the VMM reads the dirty log for pages 4-7 */
#define REPORT_PROBE_AFTER 0x612     /* tag of page 4, tag of page 7, page 4's data word */

/* mte-traps */
#define REPORT_TRAPS_PROBE 0x700   /* probe, ESR (0: no trap), value, ELR - probe, FAR */
#define REPORT_TRAPS_SUMMARY 0x701 /* exceptions taken, vectors (bitmap), MTE usable */

/* tag-owner */
#define REPORT_OWNER_BEFORE 0x710 /* page, mask of its granules' tags at the first touch */
#define REPORT_OWNER_AFTER 0x711  /* page, mask of its granules' tags after the STGs */

#endif
