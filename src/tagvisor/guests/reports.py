"""The report ids of guests/runtime/reports.h: args[0] of each UCALL_SYNC.

tests/guests checks that this module and the header agree (through
tests/support/guest_reports.py, which re-exports it). The values after the id
are named beside each (guests/README.md has the details).
"""

from typing import Final

# runtime, before main()
BOOT: Final = 0x001  # config valid, tcf, flags, ram size, IRG seed
CPU: Final = 0x002  # ID_AA64PFR1_EL1.MTE, GMID_EL1, DCZID_EL0, MTE usable

# mte-smoke
SMOKE_ARENA: Final = 0x100  # base, size
SMOKE_IRG_START: Final = 0x110  # RGSR_EL1, GCR_EL1
SMOKE_IRG: Final = 0x111  # index, Xn, Xm, result, RGSR_EL1 after
SMOKE_ADDG: Final = 0x120  # case, Xn, result
SMOKE_SUBG: Final = 0x121  # case, Xn, result
SMOKE_GMI: Final = 0x122  # case, Xn, Xm, result
SMOKE_STG: Final = 0x130  # pointer, LDG of its granule, LDG of the next
SMOKE_ST2G: Final = 0x131  # pointer, LDG +0, +16, +32
SMOKE_STGP: Final = 0x132  # pointer, LDG, data word 0, data word 1
SMOKE_STZG: Final = 0x133  # pointer, LDG, data at +0, data at +16
SMOKE_STZ2G: Final = 0x134  # pointer, LDG +0, LDG +16, data at +24, at +32
SMOKE_STGM: Final = 0x140  # address, Xt, tags of 16 granules by LDG, tag of 17th
SMOKE_LDGM: Final = 0x141  # address, result
SMOKE_STZGM: Final = 0x142  # address, LDGM words of the 1 KiB window
SMOKE_STZGM_DATA: Final = 0x143  # address, first zero byte, zero bytes (window)
SMOKE_DC_GVA: Final = 0x150  # pointer, LDGM words of the 1 KiB window
SMOKE_DC_GZVA: Final = 0x151  # pointer, LDGM words of the 1 KiB window
SMOKE_DC_GZVA_DATA: Final = 0x152  # pointer, first zero byte, zero bytes (window)
SMOKE_TCMA: Final = 0x160  # case, pointer, ESR, FAR, value
SMOKE_ATA_OFF: Final = 0x170  # LDG, IRG, RGSR before, RGSR after, load ESR
SMOKE_ATA_ON: Final = 0x171  # LDG after ATA is back, data word STGP wrote
SMOKE_ATA_ADDG: Final = 0x172  # Xn, ADDG #16, #1 result while ATA was off

# heap
HEAP_INIT: Final = 0x200  # arena base, arena size, size classes, tcf
HEAP_ALLOC: Final = 0x201  # index, pointer, size, exclude mask used
HEAP_FREE: Final = 0x202  # index, pointer, tag after the free, exclude mask used
HEAP_UAF: Final = 0x210  # pointer, ESR, FAR, TFSR_EL1
HEAP_OVERFLOW: Final = 0x211  # pointer, ESR, FAR, TFSR_EL1
HEAP_UNDERFLOW: Final = 0x212  # pointer, ESR, FAR, TFSR_EL1
HEAP_DOUBLE_FREE: Final = 0x213  # pointer, refused
HEAP_SUMMARY: Final = 0x220  # synchronous faults, TFSR hits, tcf

# churn
CHURN_INIT: Final = 0x300  # region base, region size, rounds, seed
CHURN_ROUND: Final = 0x301  # round, live allocations, heap sum, region sum, TFSR

# kvm-probe
PROBE_PAGE: Final = 0x600  # page, first granule's tag, last granule's tag, data word
PROBE_LOG_RESET: Final = 0x610  # (none): the VMM reads and clears the dirty log
PROBE_LOG_READ: Final = 0x611  # (none): the VMM reads the dirty log for pages 4-7
PROBE_AFTER: Final = 0x612  # tag of page 4, tag of page 7, page 4's data word

# mte-traps
TRAPS_PROBE: Final = 0x700  # probe, ESR (0: no trap), value, ELR - probe, FAR
TRAPS_SUMMARY: Final = 0x701  # exceptions taken, vectors (bitmap), MTE usable

# tag-owner
OWNER_BEFORE: Final = 0x710  # page, mask of its granules' tags at the first touch
OWNER_AFTER: Final = 0x711  # page, mask of its granules' tags after the STGs
