"""A guest paused inside an MMIO access is saved after KVM has finished that access."""

from pathlib import Path

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import CORE_REG_PC
from tagvisor.snapshot import restore_snapshot, save_snapshot
from tagvisor.vmm import Machine, MachineBuilder
from tests.support.guest_reports import HEAP_UAF
from tests.support.guests import prebuilt

RAM = 16 << 20


def heap_paused_in_its_uaf_report(kvm: ModelKvm) -> Machine:
    machine = MachineBuilder(kvm).memory(RAM).image(prebuilt("heap")).build()
    machine.pause_on_report(HEAP_UAF)
    machine.run()
    machine.pause_on_report(None)
    return machine


def uaf_reports(machine: Machine) -> int:
    return sum(1 for c in machine.ucall.calls if c.args[:1] == (HEAP_UAF,))


def test_a_paused_vcpu_has_finished_its_mmio_store() -> None:
    """Scenario: the heap guest is paused while the VMM handles its ucall doorbell store.

    KVM moves PC past an MMIO access only on the next KVM_RUN; the machine re-enters
    with immediate_exit when it pauses, so PC is past the store, not on it.
    """
    machine = heap_paused_in_its_uaf_report(ModelKvm(96 << 20))
    pc = machine.vcpus[0].get_one_reg(CORE_REG_PC)
    doorbell_store = machine.memory.read(pc - 4, 4)
    assert int.from_bytes(doorbell_store, "little") & 0xFFC0_0000 == 0xF900_0000  # STR Xt


def test_a_restored_guest_does_not_repeat_the_access_it_was_paused_in(tmp_path: Path) -> None:
    """Scenario: snapshot the paused heap guest, restore it, run it to the end.

    Before the machine settled its VCPUs on pause, the restored guest re-executed the
    doorbell store and the use-after-free was reported twice.
    """
    kvm = ModelKvm(96 << 20)
    machine = heap_paused_in_its_uaf_report(kvm)
    save_snapshot(machine, tmp_path / "heap.snap")
    restored = restore_snapshot(tmp_path / "heap.snap", kvm)
    assert restored.run().exit_status == 0
    assert uaf_reports(restored) == 1
