"""KVM for arm64 with MTE: the uapi, the backend API, and its backends.

``tagvisor.kvm.model`` is the software KVM that runs anywhere; a real ``/dev/kvm``
backend implements the same :mod:`tagvisor.kvm.api`.
"""

from tagvisor.kvm.errors import KvmError

__all__ = ["KvmError"]
