"""The mte_traps scenario: guest code that touches MTE, with and without MTE in the VM.

The mte-traps guest (guests/mte-traps) reads every MTE system register, runs IRG, STG
and LDG, writes all ones to the writable registers and reads them back, and reads
ID_AA64PFR1_EL1, from a vector table of its own that records and skips whatever traps.
Each probe's report becomes three compared fields: the ESR_EL1 the guest saw (0: no
exception), the value read (or the tag produced), and where ELR_EL1 pointed (the
probed instruction's offset in its stub, 4, when it trapped). FAR_EL1 is UNKNOWN after
an UNDEF or a trapped MRS, so it is kept as a host fact.
"""

from __future__ import annotations

from typing import Final

from tagvisor.arch.sysregs import GcrEl1, RgsrEl1, Tfsr
from tagvisor.conformance.programs import Session, run_with_watchdog
from tagvisor.conformance.scenarios import Result, scenario
from tagvisor.guests.reports import TRAPS_PROBE, TRAPS_SUMMARY
from tagvisor.kvm.api import Kvm
from tagvisor.vmm.devices.ucall import UcallCmd

#: The probes in the guest's order (enum probe in guests/mte-traps/main.c).
PROBES: Final = (
    "mrs_GCR_EL1",
    "mrs_RGSR_EL1",
    "mrs_TFSR_EL1",
    "mrs_TFSRE0_EL1",
    "mrs_GMID_EL1",
    "irg",
    "mrs_RGSR_EL1_after_irg",
    "stg",
    "ldg",
    "msr_GCR_EL1_ones",
    "mrs_GCR_EL1_back",
    "msr_RGSR_EL1_ones",
    "mrs_RGSR_EL1_back",
    "msr_TFSR_EL1_ones",
    "mrs_TFSR_EL1_back",
    "msr_TFSRE0_EL1_ones",
    "mrs_TFSRE0_EL1_back",
    "mrs_ID_AA64PFR1_EL1",
)

#: The bits each register architecturally holds (Arm ARM D19.2): GCR_EL1 Exclude and
#: RRND, RGSR_EL1 TAG and SEED, TFSR*_EL1 TF0 and TF1; the rest are RES0.
VALID_BITS: Final = {
    "GCR_EL1": GcrEl1.VALID,
    "RGSR_EL1": RgsrEl1.VALID,
    "TFSR_EL1": Tfsr.VALID,
    "TFSRE0_EL1": Tfsr.VALID,
}


def _register_read(probe: str) -> str | None:
    """The register an MRS probe reads, if it is one VALID_BITS masks."""
    if not probe.startswith("mrs_"):
        return None
    name = probe[4:].removesuffix("_after_irg").removesuffix("_back")
    return name if name in VALID_BITS else None


def probe_fields(prefix: str, probe: str, values: tuple[int, ...]) -> Result:
    """The fields of one REPORT_TRAPS_PROBE (ESR, value, ELR offset, FAR) under
    ``prefix.probe``.

    A value read from a register of VALID_BITS is compared masked: QEMU's TCG keeps
    every bit written to GCR_EL1, RGSR_EL1, TFSR_EL1 and TFSRE0_EL1 (target/arm's
    mte_reginfo gives them a plain fieldoffset, no write mask), where hardware keeps
    only the fields and reads RES0 bits as 0. So in the testbed the guest reads back
    all ones after writing them, and TFSRE0_EL1 shows KVM's whole reset_unknown pattern
    0x1de7ec7edbadc0de; the raw value is kept as a host fact (``_raw``).
    """
    esr, value, elr, far = values
    key = f"{prefix}.{probe}"
    fields: Result = {f"{key}.esr": f"{esr:#010x}", f"{key}.elr": elr, f"_{key}.far": f"{far:#x}"}
    register = _register_read(probe)
    if register is None:
        fields[f"{key}.value"] = f"{value:#x}"
    else:
        fields[f"{key}.value"] = f"{value & VALID_BITS[register]:#x}"
        fields[f"_{key}.raw"] = f"{value:#x}"
    return fields


def traps_in(kvm: Kvm, *, mte: bool) -> Result:
    """Boot mte-traps in a VM with or without MTE; its probes and summary as fields."""
    prefix = "mte_on" if mte else "mte_off"
    session = Session(kvm, "mte-traps", mte=mte)
    result = run_with_watchdog(session.machine)
    fields: Result = {f"{prefix}.status": result.exit_status, f"{prefix}.state": result.state.value}
    reported = 0
    for call in session.machine.ucall.calls:
        if call.cmd is not UcallCmd.SYNC or not call.args:
            continue
        if call.args[0] == TRAPS_PROBE and len(call.args) == 6:
            index = call.args[1]
            name = PROBES[index] if index < len(PROBES) else f"probe{index}"
            fields.update(probe_fields(prefix, name, tuple(call.args[2:6])))
            reported += 1
        elif call.args[0] == TRAPS_SUMMARY and len(call.args) >= 4:
            taken, vectors, usable = call.args[1:4]
            fields.update(
                {
                    f"{prefix}.exceptions": taken,
                    f"{prefix}.vectors": f"{vectors:#x}",
                    f"{prefix}.mte_usable": bool(usable),
                }
            )
    fields[f"{prefix}.probes_reported"] = reported
    return fields


@scenario(
    "mte-traps: MRS/MSR of each MTE register, IRG, STG, LDG, in a VM with MTE and one "
    "without: the ESR the guest sees, the value read"
)
def mte_traps(kvm: Kvm) -> Result:
    """The mte-traps guest in a VM with MTE, then in one without (a fresh VM each): every
    probe's ESR, value and ELR offset, how many exceptions it took and where."""
    return {**traps_in(kvm, mte=True), **traps_in(kvm, mte=False)}
