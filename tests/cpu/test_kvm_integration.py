"""The core inside the KVM model: KVM_RUN exits (HYPERCALL/PSCI, MMIO, INTR), stage-2
effects (dirty logging, KvmError), and translated-code invalidation."""

from __future__ import annotations

import errno

import pytest

from tagvisor.arch import with_tag
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import (
    ESR_EL1,
    FAR_EL1,
    KVM_MEM_LOG_DIRTY_PAGES,
    ExitReason,
    SystemEvent,
    kvm_userspace_memory_region,
)
from tests.cpu.conftest import CODE, DATA, RAM_BASE, CpuMachine, MachineFactory
from tests.cpu.pagetables import SCTLR_ATA, SCTLR_TCF_SYNC, TCR, TCR_TBI0, identity_ram

UART = 0x0900_0000
UCALL = 0x0A00_0000
POWER_OFF = "movz x0, #0x0008\nmovk x0, #0x8400, lsl #16\nhvc #0"


def test_psci_system_off_ends_kvm_run_with_a_shutdown_event(cpu: CpuMachine) -> None:
    """Scenario: the guest asks PSCI_VERSION (answered inside KVM_RUN: x0 = 1.1), keeps
    running, then SYSTEM_OFF: KVM_RUN returns SYSTEM_EVENT / SHUTDOWN."""
    cpu.load(f"movz x0, #0x0000\nmovk x0, #0x8400, lsl #16\nhvc #0\nmov x19, x0\n{POWER_OFF}\n")
    exit_ = cpu.vcpu.run()
    assert exit_.reason == ExitReason.SYSTEM_EVENT
    assert exit_.system_event == SystemEvent.SHUTDOWN
    assert cpu.x(19) == 0x0001_0001
    assert cpu.pc == CODE + 7 * 4


def test_mmio_write_exit_carries_the_stored_bytes(cpu: CpuMachine) -> None:
    """Scenario: STRB to the UART and STR X to the ucall doorbell: each is an MMIO exit
    with address, size and little-endian data; the next KVM_RUN continues after it."""
    cpu.load(
        f"mov x1, #{UART:#x}\nmov w2, #0x41\nstrb w2, [x1]\nmov x3, #{UCALL:#x}\n"
        f"ldr x4, =0x1122334455667788\nstr x4, [x3]\nmov x5, #7\n{POWER_OFF}\n"
    )
    first = cpu.vcpu.run()
    assert first.reason == ExitReason.MMIO
    assert first.mmio is not None
    assert (first.mmio.phys_addr, first.mmio.length, first.mmio.is_write) == (UART, 1, True)
    assert first.mmio.data == b"A"
    second = cpu.vcpu.run()
    assert second.mmio is not None
    assert (second.mmio.phys_addr, second.mmio.data) == (UCALL, bytes.fromhex("8877665544332211"))
    assert cpu.vcpu.run().reason == ExitReason.SYSTEM_EVENT
    assert cpu.x(5) == 7


def test_mmio_reads_complete_with_the_vmm_data(cpu: CpuMachine) -> None:
    """Scenario: LDRSH from MMIO: exit with is_write False and length 2; the VMM gives
    0x8001 through KVM's mmio.data and the load completes sign-extended. An LDP from
    MMIO exits once per element; post-index writeback happens once."""
    cpu.load(
        f"""
        mov x1, #{UART:#x}
        ldrsh x2, [x1, #0x18]
        add x3, x2, #1
        ldp w4, w5, [x1], #8
        {POWER_OFF}
        """
    )
    exit_ = cpu.vcpu.run()
    assert exit_.mmio is not None
    assert (exit_.mmio.phys_addr, exit_.mmio.length, exit_.mmio.is_write) == (UART + 0x18, 2, False)
    cpu.vcpu.set_mmio_read_data(b"\x01\x80")
    first = cpu.vcpu.run()
    assert cpu.x(2) == 0xFFFF_FFFF_FFFF_8001
    assert cpu.x(3) == 0xFFFF_FFFF_FFFF_8002
    assert first.mmio is not None
    assert first.mmio.phys_addr == UART
    cpu.vcpu.set_mmio_read_data(b"\x0a\x00\x00\x00")
    second = cpu.vcpu.run()
    assert second.mmio is not None
    assert second.mmio.phys_addr == UART + 4
    cpu.vcpu.set_mmio_read_data(b"\x0b\x00\x00\x00")
    assert cpu.vcpu.run().reason == ExitReason.SYSTEM_EVENT
    assert (cpu.x(4), cpu.x(5), cpu.x(1)) == (10, 11, UART + 8)


def test_mmio_through_a_device_mapping_with_the_mmu_on(cpu: CpuMachine) -> None:
    """Scenario: MMU on, the low 1 GiB mapped Device: a store to the UART is still an
    MMIO exit at the physical address."""
    identity_ram(cpu)
    cpu.load(f"mov x1, #{UART:#x}\nmov w2, #0x5a\nstr w2, [x1]\n{POWER_OFF}\n")
    exit_ = cpu.vcpu.run()
    assert exit_.mmio is not None
    assert exit_.mmio.data == b"\x5a\0\0\0"


def test_dirty_logging_sees_stores_and_tag_stores(make_cpu: MachineFactory) -> None:
    """Scenario: RAM memslot with dirty logging, MTE checks on. Round 1: the guest
    stores to page A, STGs page B and only loads page C: A and B are dirty (a tag store
    needs write permission). Round 2 (after GET_DIRTY_LOG write-protected them) a store
    through the already-cached fast path to A is seen again."""
    cpu = make_cpu(flags=KVM_MEM_LOG_DIRTY_PAGES)
    identity_ram(cpu, sctlr=SCTLR_ATA | SCTLR_TCF_SYNC, tcr=TCR | TCR_TBI0)
    page_a, page_b, page_c = DATA, DATA + 0x1000, DATA + 0x2000
    cpu.load(
        f"""
        ldr x0, ={page_a:#x}
        ldr x1, ={with_tag(page_b, 3):#x}
        ldr x2, ={page_c:#x}
    1:  str x0, [x0]
        stg x1, [x1]
        ldr x3, [x2]
        mov x9, #{UCALL:#x}
        str xzr, [x9]
        str x0, [x0, #8]
        b 1b
        """
    )
    vm = cpu.vm
    vm.get_dirty_log(0)  # forget the VMM's own writes (image, tables)
    exit_ = cpu.vcpu.run()
    assert exit_.reason == ExitReason.MMIO

    def dirty_pages() -> set[int]:
        bitmap = int.from_bytes(vm.get_dirty_log(0), "little")
        return {RAM_BASE + 0x1000 * i for i in range(bitmap.bit_length()) if bitmap >> i & 1}

    assert {page_a, page_b} <= dirty_pages()
    assert page_c not in dirty_pages()
    assert cpu.vcpu.run().reason == ExitReason.MMIO  # the store at A + 8, then the loop
    assert page_a in dirty_pages()


def test_self_modifying_code_is_retranslated(cpu: CpuMachine) -> None:
    """Scenario: the guest calls a function returning 1, overwrites its first
    instruction with MOV X0, #2 (data store to the code page), IC IVAU + ISB, and calls
    it again: the second call returns 2."""
    cpu.go(
        """
        bl func
        mov x19, x0
        adr x1, func
        ldr w2, patch
        str w2, [x1]
        dc cvau, x1
        dsb ish
        ic ivau, x1
        dsb ish
        isb
        bl func
        mov x20, x0
        b done
    func:
        mov x0, #1
        ret
    patch:
        mov x0, #2
    done:
        """
    )
    assert (cpu.x(19), cpu.x(20)) == (1, 2)


def test_stage2_failures_fail_kvm_run(cpu: CpuMachine) -> None:
    """Scenario: a second memslot whose VMM memory was unmapped after registration; a
    guest load there makes KVM_RUN fail with EFAULT (KvmError), PC stays on the load."""
    extra = cpu.kvm.user_memory.map_anonymous(0x10000)
    cpu.vm.set_user_memory_region(
        kvm_userspace_memory_region(
            slot=1, flags=0, guest_phys_addr=0x8000_0000, memory_size=0x10000, userspace_addr=extra
        )
    )
    cpu.kvm.user_memory.unmap(extra, 0x10000)
    cpu.load(f"mov x1, #1\nmov x0, #0x80000000\nldr x2, [x0]\n{POWER_OFF}\n")
    with pytest.raises(KvmError) as failure:
        cpu.vcpu.run()
    assert failure.value.errno == errno.EFAULT
    assert cpu.pc == CODE + 8
    assert cpu.x(1) == 1


def test_instruction_fetch_from_mmio_is_an_external_abort(cpu: CpuMachine) -> None:
    """Scenario: a branch to the UART address: instruction abort, IFSC 0x10 (external)."""
    cpu.load(f"mov x1, #{UART:#x}\nbr x1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == 0x21 << 26 | 1 << 25 | 0x10
    assert cpu.sysreg(FAR_EL1) == UART
