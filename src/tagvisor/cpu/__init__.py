"""An A64 interpreter for bare-metal EL1 guests, run as a KVM model VCPU's executor.

:class:`A64Core` implements :class:`tagvisor.kvm.model.guest.GuestExecutor`: attach one
to a model VCPU and KVM_RUN executes guest code from guest RAM, with stage-1
translation, exceptions to the guest's vectors, and the MTE instructions and tag
checks through :mod:`tagvisor.arch`.
"""

from tagvisor.cpu.core import A64Core

__all__ = ["A64Core"]
