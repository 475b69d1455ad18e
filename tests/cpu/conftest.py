"""A model VM with one VCPU running an A64Core over 4 MiB of RAM at 0x4000_0000.

Snippets run through :meth:`CpuMachine.go`: the source is assembled at 0x4008_0000 and
followed by ``hvc #0x7e57``; the test drives ``A64Core.run`` itself, so the HVC comes
back as a HYPERCALL exit with every register as the snippet left it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tagvisor.cpu import A64Core
from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model import ModelKvm, ModelVcpu, ModelVm
from tagvisor.kvm.model.profiles import DEFAULT_PROFILE
from tagvisor.kvm.uapi import (
    ELR_EL1,
    ESR_EL1,
    FAR_EL1,
    VBAR_EL1,
    Cap,
    ExitReason,
    kvm_userspace_memory_region,
)
from tests.cpu.asm import assemble

RAM_BASE = 0x4000_0000
RAM_SIZE = 4 << 20
CODE = 0x4008_0000
VECTORS = 0x4007_0000
STACK_TOP = 0x4006_0000
DATA = 0x4020_0000
#: PSTATE.M for EL1h / EL1t / EL0t.
EL1H, EL1T, EL0T = 0b0101, 0b0100, 0b0000
HVC_DONE = "hvc #0x7e57"


@dataclass
class CpuMachine:
    kvm: ModelKvm
    vm: ModelVm
    vcpu: ModelVcpu
    core: A64Core
    ram: int

    # -- memory ----------------------------------------------------------------------------

    def write(self, gpa: int, data: bytes) -> None:
        self.kvm.user_memory.write(self.ram + gpa - RAM_BASE, data)

    def read(self, gpa: int, length: int) -> bytes:
        return self.kvm.user_memory.read(self.ram + gpa - RAM_BASE, length)

    def write64(self, gpa: int, *values: int) -> None:
        self.write(gpa, struct.pack(f"<{len(values)}Q", *values))

    def read64(self, gpa: int) -> int:
        value: int = struct.unpack("<Q", self.read(gpa, 8))[0]
        return value

    # -- registers -------------------------------------------------------------------------

    def x(self, n: int) -> int:
        return self.vcpu.regs.core[n]

    def set_x(self, n: int, value: int) -> None:
        self.vcpu.regs.core[n] = value

    @property
    def pc(self) -> int:
        return self.vcpu.regs.pc

    @property
    def pstate(self) -> int:
        return self.vcpu.regs.core[33]

    @property
    def nzcv(self) -> int:
        return self.pstate >> 28

    def sysreg(self, reg: int) -> int:
        return self.vcpu.regs.sysregs[reg]

    def set_sysreg(self, reg: int, value: int) -> None:
        self.vcpu.regs.sysregs[reg] = value

    # -- running ---------------------------------------------------------------------------

    def load(self, source: str, at: int = CODE) -> None:
        """Assemble ``source`` at ``at``, copy it into RAM and point PC there.

        The VMM rewrote guest code behind the core's back, so it asks the core to
        forget its translations (stores by the guest itself are tracked).
        """
        self.write(at, assemble(source, at))
        self.core.flush_translations()
        self.vcpu.regs.pc = at

    def resume(self, limit: int = 20) -> VcpuExit:
        """Run the core until an exit other than INTR."""
        for _ in range(limit):
            exit_ = self.core.run(self.vcpu.context())
            if exit_.reason != ExitReason.INTR:
                return exit_
        raise AssertionError("the guest did not stop")

    def go(self, source: str, at: int = CODE) -> VcpuExit:
        """Run ``source`` to its end (the appended ``hvc``); the exit must be that HVC."""
        self.load(f"{source}\n{HVC_DONE}\n", at)
        exit_ = self.resume()
        assert exit_.reason == ExitReason.HYPERCALL, exit_
        if VECTORS <= self.pc < VECTORS + 0x800:
            raise AssertionError(
                f"unexpected exception: vector {self.vector_taken():#x} "
                f"ESR {self.sysreg(ESR_EL1):#x} ELR {self.sysreg(ELR_EL1):#x} "
                f"FAR {self.sysreg(FAR_EL1):#x}"
            )
        return exit_

    def install_vectors(self) -> None:
        """A vector table at VECTORS whose sync entries stop with distinct HVCs.

        Current EL with SP0: ``hvc #0x100``; SPx: ``hvc #0x200``; lower EL: ``hvc
        #0x400``. ``vector_taken`` tells them apart by the PC after the HVC.
        """
        source = ".balign 2048\n"
        for offset in range(0, 0x800, 0x80):
            source += f".org {offset:#x}\n hvc #{offset:#x}\n"
        self.write(VECTORS, assemble(source, VECTORS))
        self.set_sysreg(VBAR_EL1, VECTORS)

    def vector_taken(self) -> int:
        """The vector offset whose HVC stopped the core."""
        return self.pc - 4 - VECTORS


MachineFactory = Callable[..., CpuMachine]


@pytest.fixture
def make_cpu() -> MachineFactory:
    def make(
        *,
        mte: bool = True,
        budget: int | None = 100_000,
        flags: int = 0,
        mte_level: int = 2,
        profile: str = DEFAULT_PROFILE,
    ) -> CpuMachine:
        kvm = ModelKvm(16 << 20, profile, host_mte_level=mte_level)
        vm = kvm.create_vm()
        if mte:
            vm.enable_cap(Cap.ARM_MTE)
        ram = kvm.user_memory.map_anonymous(RAM_SIZE)
        vm.set_user_memory_region(
            kvm_userspace_memory_region(
                slot=0,
                flags=flags,
                guest_phys_addr=RAM_BASE,
                memory_size=RAM_SIZE,
                userspace_addr=ram,
            )
        )
        vcpu = vm.create_vcpu(0)
        vcpu.arm_vcpu_init(vm.arm_preferred_target())
        vcpu.regs.core[34] = STACK_TOP  # SP_EL1
        core = A64Core(max_instructions_per_run=budget)
        vcpu.attach(core)
        machine = CpuMachine(kvm, vm, vcpu, core, ram)
        machine.install_vectors()
        return machine

    return make


@pytest.fixture
def cpu(make_cpu: MachineFactory) -> CpuMachine:
    return make_cpu()
