"""The real-KVM testbed: Debian's arm64 kernel booted under QEMU with
``virtualization=on,mte=on``, running a suite against its ``/dev/kvm``.
"""
