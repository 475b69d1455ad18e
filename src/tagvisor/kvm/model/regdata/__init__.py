"""Linux's VCPU register file as measured on the testbed, one JSON file per kernel.

``linux-6.1.json`` (Debian 12's 6.1.0-57-arm64) and ``linux-6.12.json``
(bookworm-backports' 6.12.95+deb12-arm64), measured on 2026-12-02 under QEMU 10.0.2
TCG, ``-M virt,virtualization=on,mte=on -cpu max``, by the testbed suite
``tagvisor.conformance.measure_regs`` and turned into these files by
``scripts/regdata-from-testbed``. Each holds, for a VCPU of an MTE VM and of a VM
without MTE (features PSCI_0_2): KVM_GET_REG_LIST in the kernel's order, the value
GET_ONE_REG gave for every listed register after KVM_ARM_VCPU_INIT, what SET_ONE_REG
did to each 4-bit field of every ID register before and after the VM had run, and
KVM_ARM_GET_REG_WRITABLE_MASKS where the kernel has it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

#: SET_ONE_REG probe classes of one ID-register field, as measured: the field one
#: below its value, 0, one above, and 0xF.
PROBES = ("lower", "zero", "raise", "f")


@dataclass(frozen=True)
class RegFile:
    """One kernel's measured register file (see the module docstring)."""

    name: str
    kernel: str
    lists: dict[bool, tuple[int, ...]]
    resets: dict[bool, dict[int, int]]
    mpidr_vcpu1: int
    pstate_el1_32bit: int
    live: frozenset[int]
    #: (after_run, reg) -> {(field shift, probe class): -errno or 0}; absent is EINVAL.
    id_set: dict[tuple[bool, int], dict[tuple[int, str], int]]
    #: KVM_ARM_GET_REG_WRITABLE_MASKS's array (index -> mask), or None without it.
    writable_masks: dict[int, int] | None
    #: The errno the kernel gave for that ioctl when it does not have it.
    masks_errno: int

    @property
    def busy_after_run(self) -> bool:
        """Whether any ID register write failed with EBUSY once the VM had run (6.7+)."""
        return any(-16 in probes.values() for (after, _), probes in self.id_set.items() if after)

    def probed(self, reg: int) -> bool:
        """Whether SET_ONE_REG of ``reg`` was measured field by field (op0=3 op1=0 CRn=0)."""
        return (False, reg) in self.id_set


def _probes(raw: dict[str, dict[str, int]], probed: list[int], after: bool) -> dict[Any, Any]:
    table: dict[tuple[bool, int], dict[tuple[int, str], int]] = {(after, r): {} for r in probed}
    for reg, probes in raw.items():
        for key, code in probes.items():
            shift, kind = key.split(".")
            table[after, int(reg, 16)][int(shift), kind] = code
    return table


@functools.cache
def regfile(name: str) -> RegFile:
    """The measured register file called ``name`` (``linux-6.1`` or ``linux-6.12``)."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text()
    raw = json.loads(text)
    lists = {mte: tuple(int(r, 16) for r in raw["reg_list"][key]) for mte, key in _KEYS}
    on = {int(r, 16): int(v, 16) for r, v in raw["reset"].items()}
    off = {r: v for r, v in on.items() if r in set(lists[False])}
    off.update({int(r, 16): int(v, 16) for r, v in raw["reset_nomte"].items()})
    probed = [r for r in lists[True] if r & 0xFFFF_FF80 == 0x0013_C000]
    masks = raw["writable_masks"]
    return RegFile(
        name=name,
        kernel=raw["kernel"],
        lists=lists,
        resets={True: on, False: off},
        mpidr_vcpu1=int(raw["reset_mpidr_vcpu1"], 16),
        pstate_el1_32bit=int(raw["reset_pstate_el1_32bit"], 16),
        live=frozenset(int(r, 16) for r in raw["live"]),
        id_set={
            **_probes(raw["id_set"]["before_run"], probed, False),
            **_probes(raw["id_set"]["after_run"], probed, True),
        },
        writable_masks=None if masks is None else {int(i): int(m, 16) for i, m in masks.items()},
        masks_errno=-raw["writable_masks_errno"],
    )


_KEYS = ((True, "mte"), (False, "nomte"))
