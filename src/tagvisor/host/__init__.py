"""The host kernel's memory as MTE sees it (arch/arm64/mm, arch/arm64/kernel/mte.c).

Physical frames with PG_mte_tagged and PG_mte_lock, process mappings with PROT_MTE and
VM_MTE_ALLOWED, and what memory pressure does to tags: swap, page migration,
copy-on-write and KSM.
"""
