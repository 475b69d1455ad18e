"""The GICv3's state through the device attributes: what is read, and the write order."""

from __future__ import annotations

from tagvisor.kvm.api import Device
from tagvisor.kvm.uapi import (
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
    KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
    KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
)
from tagvisor.vmm.linux.gic_state import (
    GICD_CTLR,
    GICD_ICENABLER,
    GICD_IROUTER,
    GICD_ISENABLER,
    GICD_ISPENDR,
    GICR_ICFGR1,
    GICR_ISPENDR0,
    ICC_CTLR_EL1,
    ICC_SRE_EL1,
    PRIBITS_SHIFT,
    restore_gic,
    save_gic,
)

NR_IRQS = 128


class FakeGic(Device):
    """Attributes as a dict (zero unless set); every write is logged."""

    def __init__(self, pribits: int = 5) -> None:
        self.values: dict[tuple[int, int], int] = {}
        self.writes: list[tuple[int, int, int]] = []
        for mpidr in (0, 1):  # ICC_CTLR_EL1.PRIbits of both VCPUs
            key = (KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr << 32 | ICC_CTLR_EL1)
            self.values[key] = (pribits - 1) << PRIBITS_SHIFT

    def set_device_attr(self, group: int, attr: int, value: bytes = b"") -> None:
        number = int.from_bytes(value, "little")
        self.writes.append((group, attr, number))
        self.values[(group, attr)] = number

    def get_device_attr(self, group: int, attr: int, size: int = 8) -> bytes:
        return self.values.get((group, attr), 0).to_bytes(size, "little")


def test_every_register_is_read_once_and_restored_to_its_value() -> None:
    """Scenario: a GIC of 2 VCPUs with SPI 33 enabled and routed, a PPI pending and
    GICD_CTLR set: save, restore into a fresh fake, and every value is there."""
    source = FakeGic()
    source.values[(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_CTLR)] = 0x12
    source.values[(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_ISENABLER + 4)] = 1 << 1
    source.values[(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_IROUTER + 8 * 33)] = 1
    source.values[(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, 1 << 32 | GICR_ISPENDR0)] = 1 << 27
    state = save_gic(source, (0, 1), NR_IRQS)
    attrs = [(register.group, register.attr) for register, _ in state.values]
    assert len(attrs) == len(set(attrs))
    target = FakeGic()
    restore_gic(target, state)
    for register, value in state.values:
        assert target.values.get((register.group, register.attr), 0) == value


def test_a_restore_writes_in_the_order_kvm_needs() -> None:
    """Scenario: restore a saved state and look at the write order: GICD_CTLR first;
    per redistributor, ICFGR1 before the line level before ISPENDR0; each set-enable
    preceded by its clear twin (all ones); SPI routing before SPI pending; each CPU
    interface starts with ICC_SRE_EL1."""
    state = save_gic(FakeGic(), (0,), NR_IRQS)
    target = FakeGic()
    restore_gic(target, state)
    order = [(group, attr) for group, attr, _ in target.writes]
    assert order[0] == (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_CTLR)
    redist = KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
    config, pending = order.index((redist, GICR_ICFGR1)), order.index((redist, GICR_ISPENDR0))
    level = order.index((KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, 0))
    assert config < level < pending
    enable = order.index((KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_ISENABLER + 4))
    assert target.writes[enable - 1] == (
        KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
        GICD_ICENABLER + 4,
        2**32 - 1,
    )
    route = order.index((KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_IROUTER + 8 * 32))
    assert route < order.index((KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_ISPENDR + 4))
    cpu = [a for g, a in order if g == KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS]
    assert cpu[0] == ICC_SRE_EL1


def test_the_priority_bits_decide_how_many_active_priority_registers() -> None:
    """Scenario: 5 priority bits give one AP0R and one AP1R; 7 give four of each."""
    for pribits, aprs in ((5, 1), (7, 4)):
        state = save_gic(FakeGic(pribits), (0,), 64)
        cpu = [r for r, _ in state.values if r.group == KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS]
        assert len(cpu) == 7 + 2 * aprs


def test_redistributor_attributes_carry_the_vcpus_affinity() -> None:
    """Scenario: VCPU 1's registers have MPIDR affinity 1 in attr bits 63:32."""
    state = save_gic(FakeGic(), (0, 1), 64)
    vcpu1 = [r.attr for r, _ in state.values if r.group == KVM_DEV_ARM_VGIC_GRP_REDIST_REGS]
    assert {attr >> 32 for attr in vcpu1} == {0, 1}
