"""The software KVM: Linux's arm64 KVM MTE ABI, modelled, with kernel profiles."""

from tagvisor.kvm.model.profiles import DEFAULT_PROFILE, PROFILES, KernelProfile, profile_named
from tagvisor.kvm.model.system import ModelKvm
from tagvisor.kvm.model.user_memory import ModelUserMemory
from tagvisor.kvm.model.vcpu import ModelVcpu
from tagvisor.kvm.model.vm import ModelVm

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "KernelProfile",
    "ModelKvm",
    "ModelUserMemory",
    "ModelVcpu",
    "ModelVm",
    "profile_named",
]
