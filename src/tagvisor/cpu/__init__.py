"""An A64 interpreter for bare-metal EL1 guests, run as a KVM model VCPU's executor.

:class:`A64Core` runs a VCPU given as a :class:`~tagvisor.cpu.bus.CoreContext` over a
:class:`~tagvisor.cpu.bus.PhysicalBus`, with stage-1 translation, exceptions to the
guest's vectors, and the MTE instructions and tag checks through :mod:`tagvisor.arch`.
The package owns those protocols and imports nothing above :mod:`tagvisor.kvm.api`:
the KVM model implements them and makes an A64Core its VCPUs' default executor.
"""

from tagvisor.cpu.core import A64Core

__all__ = ["A64Core"]
