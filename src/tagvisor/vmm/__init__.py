"""The VMM: guest memory, the machine builder, devices, and the ways to reach guest tags.

It talks to KVM only through :mod:`tagvisor.kvm.api`, so the same machine runs on the
software model and on a real /dev/kvm.
"""

from tagvisor.vmm.builder import MachineBuilder
from tagvisor.vmm.machine import Machine, MachineError, RunResult, RunState

__all__ = ["Machine", "MachineBuilder", "MachineError", "RunResult", "RunState"]
