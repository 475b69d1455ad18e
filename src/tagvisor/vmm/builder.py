"""The machine builder: a recipe that reads top to bottom and ends with a paused machine.

    machine = (
        MachineBuilder(ModelKvm())
        .memory(256 << 20)
        .mte(tcf="sync")
        .vcpus(1)
        .image(Path("guests/prebuilt/heap.elf"))
        .build()
    )
    result = machine.run()

Order of work in :meth:`build`, as Linux requires it: create the VM, enable
KVM_CAP_ARM_MTE (only possible before any VCPU exists), map guest RAM in the VMM and
register it as memslots (an MTE VM refuses memory that cannot hold tags), create and
initialise the VCPUs, attach devices, load the image and the boot configuration, and
point VCPU 0 at the entry. Nothing runs until :meth:`Machine.run`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Final, Self, cast

import numpy as np

from tagvisor.kvm.api import GuestProgram, Kvm, Vcpu, Vm
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import CORE_REG_PC, SEED_V2_VCPU_FEATURE_MTE, Cap, VcpuFeature, arm_spi_irq
from tagvisor.vmm.devices import dma as dma_device
from tagvisor.vmm.devices import pl011, progress, ucall
from tagvisor.vmm.devices.bus import MmioBus
from tagvisor.vmm.devices.kinds import AMBA_CONSOLE, CONSOLE, DMA, UCALL
from tagvisor.vmm.devices.persist import DEVICE_KINDS, DeviceParts, Persistent
from tagvisor.vmm.linux import platform
from tagvisor.vmm.linux.gic import create_gicv3
from tagvisor.vmm.linux.guest import (
    DEFAULT_BOOTARGS,
    LinuxGuest,
    LinuxUnsupported,
    linux_guest,
    load_linux,
)
from tagvisor.vmm.loader import GuestImage, load, parse_elf
from tagvisor.vmm.machine import Machine, MachineConfig, MachineError
from tagvisor.vmm.memory import GuestMemory
from tagvisor.vmm.tag_access import WAYS, TagAccess, make_tag_access

RAM_BASE: Final = 0x4000_0000
DEFAULT_RAM: Final = 128 << 20
UART_BASE: Final = 0x0900_0000
PROGRESS_BASE: Final = 0x0900_1000
UCALL_BASE: Final = 0x0A00_0000
DMA_BASE: Final = 0x0A00_1000
BOOT_CONFIG_OFFSET: Final = 0x1000
BOOT_CONFIG_MAGIC: Final = 0x47435654  # "TVCG"
TCF_MODES: Final = {"none": 0, "sync": 1, "async": 2, "asymm": 3}
BACKINGS: Final = ("anonymous", "memfd", "hugetlb")
#: The ABI (Kvm.abi_profile) of the seed thread's v2, where MTE is a VCPU feature.
SEED_V2_ABI: Final = "seed-v2"
#: The device kinds every machine has, at their fixed bases (docs/guest-abi.md).
BUILT_IN: Final = {CONSOLE.name: UART_BASE, UCALL.name: UCALL_BASE, DMA.name: DMA_BASE}
#: MachineConfig.irqchip: none, or the in-kernel GICv3 a Linux guest has.
IRQCHIPS: Final = ("none", "gicv3")


#: The guest-physical addresses a VM of the default 40-bit IPA size can have (KVM's
#: KVM_PHYS_SHIFT default, arch/arm64/kvm/mmu.c): RAM must end below.
IPA_LIMIT: Final = 1 << 40
MAX_VCPUS: Final = 8


def config_problem(config: MachineConfig) -> str | None:
    """What is wrong with a machine shape read from outside (a snapshot's CONF, a
    migration's HELO), in words, or None: checked before anything is built, so a
    hostile shape fails here and not half way through building."""
    size, base = config.ram_size, config.ram_base
    if size <= 0 or size % (2 << 20) or base % (2 << 20) or base < 0:
        return f"guest RAM [{base:#x}, +{size:#x}) is not in whole, aligned 2 MiB blocks"
    if base + size > IPA_LIMIT:
        return f"guest RAM ends at {base + size:#x}, beyond the {IPA_LIMIT:#x} IPA space"
    if config.ram_backing not in BACKINGS:
        return f"unknown RAM backing {config.ram_backing!r}"
    if config.tcf not in TCF_MODES.values():
        return f"unknown tag check mode {config.tcf}"
    if not 1 <= config.vcpus <= MAX_VCPUS:
        return f"{config.vcpus} VCPUs; tagvisor machines have 1 to {MAX_VCPUS}"
    if config.tag_access not in WAYS:
        return f"unknown tag access way {config.tag_access!r}"
    if config.irqchip not in IRQCHIPS:
        return f"unknown interrupt controller {config.irqchip!r}; tagvisor has {IRQCHIPS}"
    if config.irqchip == "none" and config.gic_irqs:
        return f"{config.gic_irqs} GIC interrupts for a machine without a GIC"
    if config.irqchip != "none" and config.gic_irqs not in platform.GIC_IRQ_RANGE:
        return f"a GICv3 of {config.gic_irqs} interrupts (KVM takes multiples of 32, 64 to 1024)"
    for kind, device_base in config.devices:
        if kind not in DEVICE_KINDS or kind in BUILT_IN:
            return f"no extra device kind {kind!r} here"
        if device_base % 0x1000 or not 0 <= device_base < IPA_LIMIT:
            return f"the {kind} device's base {device_base:#x} is not a page in the IPA space"
    return None


#: Guest RAM whose tags are cleared per KVM_ARM_MTE_COPY_TAGS call (a 1/16 of it in
#: tags, one byte per granule here).
CLEAR_CHUNK: Final = 64 << 20


def clear_stale_tags(tags: TagAccess, base: int, size: int) -> None:
    """Give every granule of huge-page guest RAM tag 0 before anything else touches it.

    A huge page that comes back from the hugetlb pool may still hold a previous owner's
    tags, and real kernels show them (docs/conformance.md, "Memory"): 6.1 keeps each
    4 KiB page's PG_mte_tagged through the pool, so KVM never clears them; 7.3 marks a
    whole folio tagged when the VMM writes one page's tags (a restore, a migration's
    pages) and the other 511 pages keep the old owner's. Writing zeros to all of it
    first makes every page tagged and clean, on any kernel; small pages need nothing
    (the kernel clears their tags at their first touch).
    """
    for start in range(0, size, CLEAR_CHUNK):
        length = min(CLEAR_CHUNK, size - start)
        tags.write_tags(base + start, np.zeros(length // 16, np.uint8))


def boot_config(tcf: int, mte: bool, ram_size: int, argument: int = 0, irg_seed: int = 0) -> bytes:
    """The boot configuration block of docs/guest-abi.md (40 bytes)."""
    return struct.pack(
        "<IIIIQQII", BOOT_CONFIG_MAGIC, 1, tcf, int(mte), ram_size, argument, irg_seed, 0
    )


def spi_lines(vm: Vm) -> Callable[[int, bool], None]:
    """spi(n, level): drive SPI n of ``vm``'s in-kernel GIC through KVM_IRQ_LINE."""

    def spi(number: int, level: bool) -> None:
        vm.irq_line(arm_spi_irq(number), int(level))

    return spi


class MachineBuilder:
    """Collects a machine's shape; :meth:`build` makes it, paused."""

    def __init__(self, kvm: Kvm) -> None:
        self._kvm = kvm
        self._ram_size = DEFAULT_RAM
        self._ram_base = RAM_BASE
        self._backing = "anonymous"
        self._vmm_prot_mte = False
        self._mte = True
        self._tcf = TCF_MODES["sync"]
        self._mte_vcpus: frozenset[int] | None = None
        self._vcpus = 1
        self._tag_access = "copy-tags"
        self._image: GuestImage | None = None
        self._program: GuestProgram | None = None
        self._console_sink: Callable[[bytes], None] | None = None
        self._restoring = False
        self._devices: list[tuple[str, int]] = []
        self._argument = 0
        self._irg_seed = 0
        self._linux: LinuxGuest | None = None
        #: Whether the machine gets the in-kernel GICv3 (Linux guests, and their restores).
        self._irqchip = False
        self._gic_irqs = platform.GIC_NR_IRQS

    @classmethod
    def from_config(
        cls, kvm: Kvm, config: MachineConfig, console: Callable[[bytes], None] | None = None
    ) -> MachineBuilder:
        """A builder for a machine shaped like ``config`` whose memory, registers and
        devices will be restored (a snapshot, or an incoming migration); ``console``
        gets what the guest writes from then on."""
        tcf = {value: name for name, value in TCF_MODES.items()}.get(config.tcf)
        if tcf is None:
            raise ValueError(f"unknown tag check mode {config.tcf}")
        builder = (
            cls(kvm)
            .memory(
                config.ram_size,
                base=config.ram_base,
                backing=config.ram_backing,
                vmm_prot_mte=config.vmm_prot_mte,
            )
            .mte(config.mte, tcf=tcf)
            .vcpus(config.vcpus)
            .tag_access(config.tag_access)
        )
        for kind, base in config.devices:
            builder.device(kind, base)
        if console is not None:
            builder.console(console)
        builder._irqchip = config.irqchip == "gicv3"
        builder._gic_irqs = config.gic_irqs or platform.GIC_NR_IRQS
        builder._restoring = True
        return builder

    def memory(
        self,
        size: int,
        *,
        base: int = RAM_BASE,
        backing: str = "anonymous",
        vmm_prot_mte: bool = False,
    ) -> Self:
        """Guest RAM: ``size`` bytes at ``base``, backed by ``backing`` in the VMM.

        ``vmm_prot_mte`` maps it PROT_MTE in the VMM too (for the PROT_MTE tag-access
        ways of the seed thread).
        """
        if backing not in BACKINGS:
            raise ValueError(f"unknown RAM backing {backing!r}; choose from {BACKINGS}")
        if size <= 0 or size % (2 << 20):
            raise ValueError(f"guest RAM must be a positive multiple of 2 MiB, not {size:#x}")
        self._ram_size, self._ram_base = size, base
        self._backing, self._vmm_prot_mte = backing, vmm_prot_mte
        return self

    def mte(
        self, enabled: bool = True, *, tcf: str = "sync", vcpus: Collection[int] | None = None
    ) -> Self:
        """Enable MTE, and tell the guest which tag check mode to use.

        Upstream that is KVM_CAP_ARM_MTE, for the whole VM. Under the seed's v2 ABI it
        is a feature bit of each VCPU's KVM_ARM_VCPU_INIT, given to ``vcpus`` (every
        VCPU unless said); the VM cap cannot enable it on some VCPUs only.
        """
        if tcf not in TCF_MODES:
            raise ValueError(f"unknown tag check mode {tcf!r}; choose from {list(TCF_MODES)}")
        self._mte, self._tcf = enabled, TCF_MODES[tcf]
        self._mte_vcpus = None if vcpus is None else frozenset(vcpus)
        return self

    def vcpus(self, count: int) -> Self:
        """Give the machine ``count`` VCPUs (1 to 8); the secondaries start powered off
        until the guest starts them (PSCI CPU_ON)."""
        if not 1 <= count <= MAX_VCPUS:
            raise ValueError(f"tagvisor machines have 1 to {MAX_VCPUS} VCPUs")
        self._vcpus = count
        return self

    def tag_access(self, way: str) -> Self:
        """How the VMM reaches guest tags (see tagvisor.vmm.tag_access.WAYS)."""
        self._tag_access = way
        return self

    def argument(self, value: int, *, irg_seed: int = 0) -> Self:
        """The guest's program argument (e.g. churn rounds) and IRG seed, both passed in
        the boot configuration block; 0 means the guest's default."""
        if not 0 <= value < 2**64 or not 0 <= irg_seed <= 0xFFFF:
            raise ValueError("the argument is a u64 and the IRG seed 16 bits")
        self._argument, self._irg_seed = value, irg_seed
        return self

    def console(self, sink: Callable[[bytes], None]) -> Self:
        """Where console bytes go as the guest writes them (e.g. the terminal)."""
        self._console_sink = sink
        return self

    def image(self, image: GuestImage | Path) -> Self:
        """The guest: an AArch64 ELF file, or an already parsed image."""
        if isinstance(image, Path):
            image = parse_elf(image.read_bytes(), image.name)
        self._image = image
        return self

    def linux(
        self, kernel: Path, initrd: Path | None = None, append: str = DEFAULT_BOOTARGS
    ) -> Self:
        """A Linux kernel (an arm64 Image), an optional initrd and its command line.

        The files are checked now (ImageError); the machine gets the in-kernel GICv3,
        the arch timer and an interrupt-driven PL011 (docs/linux-guests.md), which
        only a real KVM has: build() refuses at once where KVM_CAP_IRQCHIP is 0.
        """
        initrd_bytes = None if initrd is None else initrd.read_bytes()
        self._linux = linux_guest(kernel.read_bytes(), initrd_bytes, append)
        self._irqchip = True
        if (AMBA_CONSOLE.name, platform.UART_BASE) in self._devices:
            return self  # a second call replaces the files, not the console
        return self.device(AMBA_CONSOLE.name, platform.UART_BASE)

    def python_guest(self, program: GuestProgram) -> Self:
        """A Python-level guest instead of an image (model backend only)."""
        self._program = program
        return self

    def device(self, kind: str, base: int) -> Self:
        """A device of a registered extra kind (tagvisor.vmm.devices.persist) at
        ``base``; snapshots and migrations carry its state."""
        if kind not in DEVICE_KINDS or kind in BUILT_IN:
            raise ValueError(f"no extra device kind {kind!r}; registered: {sorted(DEVICE_KINDS)}")
        self._devices.append((kind, base))
        return self

    def build(self) -> Machine:
        """The recipe: VM, MTE, RAM, VCPUs, the GIC (Linux guests), devices, then the
        guest; nothing runs."""
        self._refuse_linux_without_a_gic()
        vm = self._create_vm()
        memory = self._map_ram(vm)
        vcpus = self._create_vcpus(vm)
        irqchip = None
        if self._irqchip:
            irqchip = create_gicv3(vm, platform.gic_layout(self._vcpus, self._gic_irqs))
        tags = make_tag_access(self._tag_access, vm, memory, self._kvm.user_memory)
        if self._mte and self._backing == "hugetlb":
            clear_stale_tags(tags, self._ram_base, self._ram_size)
        bus, devices = self._attach_devices(memory, tags, None if irqchip is None else vm)
        machine = Machine(
            self._kvm,
            vm,
            vcpus,
            memory,
            bus,
            cast(pl011.Pl011, devices["pl011"]),
            cast(ucall.UcallDevice, devices["ucall"]),
            cast(dma_device.DmaEngine, devices["dma"]),
            tags,
            self._config(),
            devices,
        )
        machine.irqchip = irqchip
        if not self._restoring:
            self._load_guest(machine)
        return machine

    def _refuse_linux_without_a_gic(self) -> None:
        """Linux needs an interrupt controller, the arch timer and FP/SIMD: a KVM
        without an in-kernel GIC (KVM_CAP_IRQCHIP 0, the model's) cannot run it."""
        if self._irqchip and not self._kvm.check_extension(Cap.IRQCHIP):
            raise LinuxUnsupported(
                "this KVM cannot run Linux: it has no in-kernel GIC (KVM_CAP_IRQCHIP is 0). "
                "The software model has no interrupt controller, no arch timer and no "
                "FP/SIMD; boot Linux guests on a real arm64 /dev/kvm, or try one in the testbed: "
                "tagvisor testbed --linux-guest"
            )

    def _create_vm(self) -> Vm:
        """KVM_CREATE_VM, then KVM_CAP_ARM_MTE: Linux takes it only before any VCPU."""
        vm = self._kvm.create_vm()
        if self._mte and not self._per_vcpu_mte:
            if not self._kvm.check_extension(Cap.ARM_MTE):
                raise MachineError("this host's KVM has no MTE (KVM_CAP_ARM_MTE): use --no-mte")
            if self._mte_vcpus is not None and self._mte_vcpus != set(range(self._vcpus)):
                raise MachineError(
                    "KVM_CAP_ARM_MTE enables MTE on every VCPU; MTE on some VCPUs only "
                    "needs the seed's v2 ABI (--profile seed-v2)"
                )
            vm.enable_cap(Cap.ARM_MTE)
        return vm

    @property
    def _per_vcpu_mte(self) -> bool:
        """Whether MTE goes in each VCPU's features (the seed's v2) rather than the VM."""
        return self._mte and self._kvm.abi_profile() == SEED_V2_ABI

    def _map_ram(self, vm: Vm) -> GuestMemory:
        """Guest RAM mapped in the VMM and registered as a memslot (an MTE VM refuses
        memory that cannot hold tags)."""
        user = self._kvm.user_memory
        mappers: dict[str, Callable[..., int]] = {
            "anonymous": user.map_anonymous,
            "memfd": user.map_memfd,
            "hugetlb": user.map_hugetlb,
        }
        hva = mappers[self._backing](self._ram_size, mte=self._vmm_prot_mte)
        memory = GuestMemory(vm, user)
        try:
            memory.add_region(self._ram_base, self._ram_size, hva)
        except KvmError as error:
            raise MachineError(f"guest RAM ({self._backing}) was refused: {error}") from error
        return memory

    def _create_vcpus(self, vm: Vm) -> list[Vcpu]:
        """VCPUs with PSCI 0.2; all but VCPU 0 start off, for PSCI CPU_ON to start."""
        vcpus = []
        target = vm.arm_preferred_target()
        for index in range(self._vcpus):
            vcpu = vm.create_vcpu(index)
            init = type(target).from_buffer_copy(target)
            init.features[0] = 1 << VcpuFeature.PSCI_0_2
            if index:
                init.features[0] |= 1 << VcpuFeature.POWER_OFF
            if self._per_vcpu_mte and (self._mte_vcpus is None or index in self._mte_vcpus):
                init.features[0] |= 1 << SEED_V2_VCPU_FEATURE_MTE
            vcpu.arm_vcpu_init(init)
            vcpus.append(vcpu)
        return vcpus

    def _attach_devices(
        self, memory: GuestMemory, tags: TagAccess, irq_vm: Vm | None = None
    ) -> tuple[MmioBus, dict[str, Persistent[Any]]]:
        """Every device on the MMIO bus: the built-in ones, then the extra kinds;
        with ``irq_vm`` (a VM with an in-kernel GIC) they raise SPIs through it."""
        spi = None if irq_vm is None else spi_lines(irq_vm)
        parts = DeviceParts(memory, tags, self._console_sink, spi)
        bus = MmioBus()
        bus.attach(PROGRESS_BASE, progress.WINDOW, progress.ProgressRegister())
        devices: dict[str, Persistent[Any]] = {}
        for name, base in [*BUILT_IN.items(), *self._devices]:
            kind = DEVICE_KINDS[name]
            devices[name] = kind.make(parts)
            bus.attach(base, kind.window, devices[name])
        return bus, devices

    def _config(self) -> MachineConfig:
        return MachineConfig(
            ram_base=self._ram_base,
            ram_size=self._ram_size,
            ram_backing=self._backing,
            mte=self._mte,
            tcf=self._tcf,
            vcpus=self._vcpus,
            tag_access=self._tag_access,
            vmm_prot_mte=self._vmm_prot_mte,
            devices=tuple(self._devices),
            irqchip="gicv3" if self._irqchip else "none",
            gic_irqs=self._gic_irqs if self._irqchip else 0,
        )

    def _load_guest(self, machine: Machine) -> None:
        """The boot configuration block, then the image (VCPU 0 at its entry) or the
        Python guest; a Linux kernel instead gets its initrd and device tree."""
        if self._linux is not None:
            ram = (self._ram_base, self._ram_size)
            gic = platform.gic_layout(self._vcpus, self._gic_irqs)
            load_linux(self._linux, machine.memory, machine.vcpus, ram, gic)
            return
        block = boot_config(self._tcf, self._mte, self._ram_size, self._argument, self._irg_seed)
        machine.memory.write(self._ram_base + BOOT_CONFIG_OFFSET, block)
        if self._image is not None:
            machine.vcpus[0].set_one_reg(CORE_REG_PC, load(self._image, machine.memory))
        elif self._program is not None:
            if not machine.vcpus[0].attach_program(self._program):
                raise MachineError("Python guests run only on the model backend")
        else:
            raise MachineError("the machine has no guest: give it an image or a Python guest")
