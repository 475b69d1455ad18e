"""PSCI, which KVM handles in the kernel (arch/arm64/kvm/psci.c) rather than exiting.

A guest's HVC #0 reaches :func:`handle_psci` through the executor's internal
HYPERCALL exit. SYSTEM_OFF and SYSTEM_RESET become KVM_EXIT_SYSTEM_EVENT; CPU_ON starts
a powered-off VCPU at the given entry; anything else answers NOT_SUPPORTED in x0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.uapi import ExitReason, SystemEvent

if TYPE_CHECKING:
    from tagvisor.kvm.model.vcpu import ModelVcpu

PSCI_VERSION: Final = 0x8400_0000
PSCI_CPU_OFF: Final = 0x8400_0002
PSCI_CPU_ON_64: Final = 0xC400_0003
PSCI_SYSTEM_OFF: Final = 0x8400_0008
PSCI_SYSTEM_RESET: Final = 0x8400_0009
PSCI_FEATURES: Final = 0x8400_000A

SUCCESS: Final = 0
NOT_SUPPORTED: Final = 2**64 - 1  # -1
INVALID_PARAMETERS: Final = 2**64 - 2
ALREADY_ON: Final = 2**64 - 4
VERSION_1_1: Final = 0x0001_0001


def handle_psci(vcpu: ModelVcpu) -> VcpuExit | None:
    """Carry out the PSCI call in x0..x3; return the exit it causes, or None to resume."""
    regs = vcpu.regs
    function = regs.core[0] & 0xFFFF_FFFF
    # Real 6.1 reports ndata = 1, data[0] = 0 for both (seen in the testbed).
    if function == PSCI_SYSTEM_OFF:
        return VcpuExit(
            ExitReason.SYSTEM_EVENT, system_event=SystemEvent.SHUTDOWN, system_event_data=(0,)
        )
    if function == PSCI_SYSTEM_RESET:
        return VcpuExit(
            ExitReason.SYSTEM_EVENT, system_event=SystemEvent.RESET, system_event_data=(0,)
        )
    if function == PSCI_VERSION:
        regs.core[0] = VERSION_1_1
    elif function == PSCI_FEATURES:
        known = (PSCI_VERSION, PSCI_CPU_ON_64, PSCI_CPU_OFF, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET)
        regs.core[0] = SUCCESS if regs.core[1] & 0xFFFF_FFFF in known else NOT_SUPPORTED
    elif function == PSCI_CPU_ON_64:
        regs.core[0] = vcpu.vm.power_on(regs.core[1], entry=regs.core[2], context=regs.core[3])
    elif function == PSCI_CPU_OFF:
        vcpu.power_off()
        return VcpuExit(ExitReason.INTR)
    else:
        regs.core[0] = NOT_SUPPORTED
    return None
