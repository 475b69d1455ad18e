"""The model's side of the conformance suite, and the field-by-field comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tagvisor.conformance.scenarios import Result, run_all
from tagvisor.kvm.model import ModelKvm
from tagvisor.testbed.parts import kernel_named

#: The testbed's host, as the model's host parameters: QEMU's ``-cpu max`` has MTE3
#: (ID_AA64PFR1_EL1.MTE = 3) and AArch32 at EL1 (KVM_CAP_ARM_EL1_32BIT = 1).
TESTBED_MTE_LEVEL: Final = 3
TESTBED_32BIT_EL1: Final = True
#: The testbed's swap: /init's zram device (tagvisor.testbed.boot.ZRAM_SIZE), in pages.
TESTBED_SWAP_PAGES: Final = (64 << 20) // 4096

#: The model profile that matches each testbed kernel (tagvisor.testbed.parts.KERNELS).
PROFILE_FOR_KERNEL: Final = {"6.1": "linux-6.1", "6.12": "linux-6.12", "7.3": "linux-7.3"}


def profile_for(kernel: str) -> str:
    """The model profile for the testbed kernel called ``kernel`` (its old names too)."""
    return PROFILE_FOR_KERNEL[kernel_named(kernel).name]


def model_results(profile: str = "linux-6.1", only: list[str] | None = None) -> dict[str, Result]:
    """Every scenario the model can run (or those ``only`` names), on a fresh ModelKvm of
    ``profile`` each."""
    return run_all(
        lambda: ModelKvm(
            64 << 20,
            profile,
            host_mte=True,
            host_mte_level=TESTBED_MTE_LEVEL,
            host_32bit_el1=TESTBED_32BIT_EL1,
            swap_pages=TESTBED_SWAP_PAGES,
        ),
        "model",
        only,
    )


@dataclass(frozen=True)
class Difference:
    """One field a scenario recorded differently on the model and on the real KVM (``<missing>``
    where one side lacks it)."""

    scenario: str
    field: str
    model: Any
    real: Any

    def __str__(self) -> str:
        return f"{self.scenario}.{self.field}: model {self.model!r}, real {self.real!r}"


MISSING = "<missing>"


def compare(model: dict[str, Result], real: dict[str, Result]) -> list[Difference]:
    """Fields that differ, for scenarios both backends ran (``_`` fields are host facts)."""
    differences = []
    for name in sorted(model.keys() & real.keys()):
        left, right = model[name], real[name]
        for field in sorted(left.keys() | right.keys()):
            if field.startswith("_"):
                continue
            a, b = left.get(field, MISSING), right.get(field, MISSING)
            if a != b:
                differences.append(Difference(name, field, a, b))
    return differences
