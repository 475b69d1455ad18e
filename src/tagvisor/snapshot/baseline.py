"""What a freshly built machine holds before a migration's state is applied to it.

A destination builds its machine when the stream starts and applies the VCPUs' and the
GIC's state only after the source has paused the guest: that apply is downtime. Most
of it would rewrite values the fresh machine holds already (ID registers, firmware
pseudo-registers, a GIC's reset values: over half of a Linux guest's some 800), and
under nested virtualisation each KVM ioctl is dear. So the destination reads its
fresh machine once while pre-copy runs, and the apply writes only what differs.
Writing a register the value it holds changes nothing in KVM, so the result is the
same machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tagvisor.snapshot.linux_state import machine_gic
from tagvisor.vmm.machine import Machine


@dataclass
class Baseline:
    """Each VCPU's registers and the GIC's, as the fresh machine holds them."""

    registers: dict[int, dict[int, int]] = field(default_factory=dict)
    gic: dict[tuple[int, int], int] = field(default_factory=dict)


def capture_baseline(machine: Machine) -> Baseline:
    """Read every VCPU's registers (KVM_GET_REG_LIST's) and, for a machine with an
    in-kernel GIC, every GIC register, from a machine that has not run."""
    baseline = Baseline()
    for index, vcpu in enumerate(machine.vcpus):
        ids = vcpu.get_reg_list()
        baseline.registers[index] = dict(zip(ids, vcpu.get_registers(ids), strict=True))
    state = machine_gic(machine)
    if state is not None:
        baseline.gic = {(r.group, r.attr): value for r, value in state.values}
    return baseline
