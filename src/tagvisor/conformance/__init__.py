"""Conformance: the same scenarios on the model and on a real ``/dev/kvm``, compared.

``scenarios`` holds the ioctl-level scenarios (standard library only), ``programs`` the
ones that boot guest programs through the VMM; ``suite`` is what the
testbed runs inside its image; ``compare`` runs the model side and lists differences.
"""

from tagvisor.conformance import (  # registers them
    host_memory,
    owners,
    programs,
    regfile,
    scenarios,
    traps,
)

__all__ = ["host_memory", "owners", "programs", "regfile", "scenarios", "traps"]
