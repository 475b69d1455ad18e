"""A model VCPU: KVM_ARM_VCPU_INIT, ONE_REG, the reg list and KVM_RUN."""

from __future__ import annotations

import errno
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tagvisor.cpu.exceptions import EC_SYSREG, EC_UNKNOWN
from tagvisor.kvm.api import GuestProgram, Vcpu, VcpuExit
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import onereg
from tagvisor.kvm.model.guest import GeneratorGuest, GuestContext, GuestExecutor
from tagvisor.kvm.model.psci import handle_psci
from tagvisor.kvm.model.vcpu_regs import VcpuRegisters, check_reg_id
from tagvisor.kvm.uapi import (
    ID_AA64MMFR2_EL1,
    ID_AA64PFR1_EL1,
    KVM_ARM_TARGET_GENERIC_V8,
    SEED_V2_VCPU_FEATURE_MTE,
    ExitReason,
    MpState,
    VcpuFeature,
    kvm_vcpu_init,
)

if TYPE_CHECKING:
    from tagvisor.kvm.model.vm import ModelVm

#: Features this model implements; the rest of the known ones are "unsupported on this
#: host" (EINVAL), unknown bits are ENOENT (kvm_vcpu_init_check_features).
SUPPORTED_FEATURES = {VcpuFeature.POWER_OFF, VcpuFeature.EL1_32BIT, VcpuFeature.PSCI_0_2}
KNOWN_FEATURE_BITS = (1 << (max(VcpuFeature) + 1)) - 1


class ModelVcpu(Vcpu):
    """One VCPU of a :class:`ModelVm`."""

    def __init__(self, vm: ModelVm, vcpu_id: int) -> None:
        self.vm = vm
        self.vcpu_id = vcpu_id
        self.features: int | None = None
        self.regs = VcpuRegisters.reset()
        self.executor: GuestExecutor | None = None
        self.has_mte_feature = False  # the seed's v2 per-VCPU bit
        self.powered_off = False
        self._kicked = False
        self._wake = threading.Condition()

    # -- model-only plumbing -------------------------------------------------------------

    def attach(self, executor: GuestExecutor) -> None:
        """Give the VCPU something to run (the model's stand-in for guest RAM code)."""
        self.executor = executor

    def attach_program(self, program: GuestProgram) -> bool:
        """Run ``program`` on this VCPU as a Python guest."""
        self.attach(GeneratorGuest(program))
        return True

    @property
    def tag_access(self) -> bool:
        """HCR_EL2.ATA: set at VCPU reset when the VM (or, in v2, this VCPU) has MTE."""
        if self.vm.profile.mte_is_vm_cap:
            return self.vm.has_mte
        return self.has_mte_feature

    def context(self) -> GuestContext:
        """The VCPU as its executor sees it: registers, stage 2, tag access, the ID
        register the guest reads for MTE and how GMID_EL1 traps."""
        return GuestContext(
            self.regs,
            self.vm.stage2,
            self.tag_access,
            id_aa64pfr1=onereg.id_value(self, ID_AA64PFR1_EL1),
            gmid_trap_ec=self._gmid_trap_ec(),
        )

    def _gmid_trap_ec(self) -> int | None:
        """None when GMID_EL1 reads the hardware's value; else what KVM injects.

        7.0+ (profile.traps_gmid_without_mte) sets HCR_EL2.TID5 for a VM without MTE;
        sys_regs.c's idst_access then injects the trap's own syndrome (EC 0x18) when
        the VM's ID_AA64MMFR2_EL1.IDS says FEAT_IDST, else an UNDEF (EC 0).
        """
        if self.tag_access or not self.vm.profile.traps_gmid_without_mte:
            return None
        ids = onereg.id_value(self, ID_AA64MMFR2_EL1) >> 36 & 0xF
        return EC_SYSREG if ids else EC_UNKNOWN

    def kick(self) -> None:
        """Make a KVM_RUN in progress (or the next) return KVM_EXIT_INTR.

        The model's stand-in for the signal a VMM sends a VCPU thread.
        """
        with self._wake:
            self._kicked = True
            self._wake.notify_all()

    def power_off(self) -> None:
        """PSCI CPU_OFF (or created powered off): KVM_RUN waits for CPU_ON."""
        self.powered_off = True

    def power_on(self, entry: int, context: int) -> None:
        """PSCI CPU_ON on this VCPU: start at ``entry`` with x0 = ``context``."""
        with self._wake:
            el1_32bit = bool((self.features or 0) >> VcpuFeature.EL1_32BIT & 1)
            self.regs = onereg.reset(self, el1_32bit)
            self.regs.pc = entry
            self.regs.core[0] = context
            self.powered_off = False
            self._wake.notify_all()

    # -- ioctls ----------------------------------------------------------------------

    def arm_vcpu_init(self, init: kvm_vcpu_init) -> None:
        """KVM_ARM_VCPU_INIT (arm.c kvm_vcpu_set_target, kvm_vcpu_init_check_features)."""
        ioctl = "KVM_ARM_VCPU_INIT"
        if init.target != KVM_ARM_TARGET_GENERIC_V8:
            raise KvmError(
                errno.EINVAL, ioctl, f"target {init.target}: use KVM_ARM_PREFERRED_TARGET"
            )
        features = init.features[0]
        profile = self.vm.profile
        mte_bit = 0 if profile.mte_is_vm_cap else 1 << SEED_V2_VCPU_FEATURE_MTE
        if any(init.features[1:]) or features & ~(KNOWN_FEATURE_BITS | mte_bit):
            raise KvmError(errno.ENOENT, ioctl, f"unknown feature bits {features:#x}")
        wants_mte = bool(features & mte_bit)
        others = features & ~mte_bit
        for feature in VcpuFeature:
            if others >> feature & 1 and feature not in SUPPORTED_FEATURES:
                raise KvmError(errno.EINVAL, ioctl, f"{feature.name} is not supported by the model")
        if wants_mte and not self.vm.kvm.host_mte:
            raise KvmError(errno.EINVAL, ioctl, "the host has no MTE")
        if others >> VcpuFeature.EL1_32BIT & 1:
            if not self.vm.kvm.host_32bit_el1:
                raise KvmError(errno.EINVAL, ioctl, "the host has no AArch32 EL1")
            if self.vm.has_mte or wants_mte:
                raise KvmError(errno.EINVAL, ioctl, "AArch32 VCPUs cannot have MTE")
        # The seed's v2 let MTE differ between VCPUs on purpose ("allow it even though I
        # hope no-one will use it"), so its bit is left out of the comparison.
        stable = features & ~(1 << VcpuFeature.POWER_OFF) & ~mte_bit
        if self.vm.vcpu_features is not None and self.vm.vcpu_features != stable:
            raise KvmError(errno.EINVAL, ioctl, "all VCPUs of a VM need the same features")
        self.vm.vcpu_features = stable
        self.features = features
        self.powered_off = bool(features >> VcpuFeature.POWER_OFF & 1)
        if wants_mte:
            self.has_mte_feature = True
            self.vm.seed_v2_mte = True  # sticky, VM-wide
        self.regs = onereg.reset(self, bool(features >> VcpuFeature.EL1_32BIT & 1))

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: STOPPED while powered off, else RUNNABLE."""
        return MpState.STOPPED if self.powered_off else MpState.RUNNABLE

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE as arm.c's kvm_arch_vcpu_ioctl_set_mpstate: RUNNABLE and
        STOPPED power the VCPU on and off (its registers stay as they are); the model
        has no WFI suspension, so SUSPENDED is refused like an unknown state."""
        if state == MpState.STOPPED:
            self.power_off()
        elif state == MpState.RUNNABLE:
            with self._wake:
                self.powered_off = False
                self._wake.notify_all()
        else:
            detail = "the model does not suspend VCPUs" if state == MpState.SUSPENDED else ""
            raise KvmError(errno.EINVAL, "KVM_SET_MP_STATE", detail or f"unknown state {state}")

    def _require_init(self, ioctl: str) -> None:
        if self.features is None:
            raise KvmError(errno.ENOEXEC, ioctl, "KVM_ARM_VCPU_INIT must come first")

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG of any register in Linux's list (``onereg``)."""
        ioctl = "KVM_GET_ONE_REG"
        self._require_init(ioctl)
        check_reg_id(reg_id, ioctl)
        return onereg.get(self, reg_id)

    def get_registers(self, reg_ids: Sequence[int]) -> list[int]:
        """GET_ONE_REG of each id, the checks made once for all (``onereg.get_many``)."""
        ioctl = "KVM_GET_ONE_REG"
        self._require_init(ioctl)
        for reg_id in reg_ids:
            check_reg_id(reg_id, ioctl)
        return onereg.get_many(self, list(reg_ids))

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG: MTE registers take any value; ID registers as Linux allows."""
        ioctl = "KVM_SET_ONE_REG"
        self._require_init(ioctl)
        check_reg_id(reg_id, ioctl)
        onereg.set_(self, reg_id, value)

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: Linux's list for this profile, MTE ones only with MTE."""
        self._require_init("KVM_GET_REG_LIST")
        return onereg.reg_list(self)

    def set_mmio_read_data(self, data: bytes) -> None:
        """KVM_RUN's MMIO read completes with ``data`` on the next run."""
        if self.executor is not None:
            self.executor.complete_mmio_read(data)

    def run(self) -> VcpuExit:
        """KVM_RUN: run the attached executor until it needs the VMM.

        A powered-off VCPU waits for PSCI CPU_ON (or a kick). PSCI calls are handled
        here, as KVM handles them in the kernel. Unless something else was attached,
        the host's A64 core runs whatever code is in guest RAM, as hardware would.
        """
        self._require_init("KVM_RUN")
        if not self.vm.has_run:  # kvm_arch_vcpu_run_pid_change, before immediate_exit
            onereg.first_run(self)
            self.vm.has_run = True
        with self._wake:
            self._wake.wait_for(lambda: not self.powered_off or self._kicked)
            kicked, self._kicked = self._kicked, False
        if kicked:
            # Like KVM_RUN: finish a pending MMIO access, then honour the kick, so the
            # registers a VMM saves next are consistent (api.rst, immediate_exit).
            if self.executor is not None:
                pending = self.executor.complete_pending(self.context())
                if pending is not None:
                    return pending
            return VcpuExit(ExitReason.INTR)
        if self.executor is None:
            self.executor = self.vm.kvm.new_executor()
        while True:
            # Executors hold stage2.lock per block (the A64 core) or per access (Python
            # guests), so a dirty-log harvest never lands between a fault and its write.
            exit_ = self.executor.run(self.context())
            if exit_.reason != ExitReason.HYPERCALL:
                return exit_
            result = handle_psci(self)
            if result is not None:
                return result
