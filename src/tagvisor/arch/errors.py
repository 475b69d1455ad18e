"""Errors of the architecture model.

Two kinds live here. *Architectural exceptions* (:class:`ArchException` and its
subclasses) are what the hardware would raise to software: an alignment fault, a
synchronous tag check fault, an undefined instruction. A CPU model turns them into
guest exceptions. *Usage errors* (:class:`ArchUsageError`) mean the caller asked the
model for something meaningless, such as a granule outside the storage.
"""

from dataclasses import dataclass

# Exceptions are plain (not frozen) dataclasses: the interpreter and pytest assign
# __traceback__ and friends, which a frozen dataclass would refuse.
from tagvisor.errors import TagvisorError


class ArchError(TagvisorError):
    """Base of every error raised by :mod:`tagvisor.arch`."""


class ArchUsageError(ArchError):
    """The model was called with arguments that no hardware state can mean."""


class GranuleRangeError(ArchUsageError, IndexError):
    """A granule range does not lie inside the tag storage."""


class TagValueError(ArchUsageError, ValueError):
    """A value given as an allocation tag does not fit in 4 bits."""


class RegisterValueError(ArchUsageError, ValueError):
    """A system register value sets bits that are RES0 in tagvisor's model."""


class ArchException(ArchError):
    """An exception the architecture raises to software."""


@dataclass
class AlignmentFault(ArchException):
    """An access that the architecture requires to be aligned was not.

    ``address`` is the virtual address used; ``required`` the alignment in bytes.
    """

    address: int
    required: int

    def __str__(self) -> str:
        return (
            f"alignment fault: address {self.address:#x} is not {self.required}-byte "
            "aligned (tag stores need granule alignment)"
        )


#: ESR_ELx.DFSC for a synchronous tag check fault (Arm ARM, ISS encoding for data aborts).
FSC_TAG_CHECK: int = 0x11


@dataclass
class TagCheckFault(ArchException):
    """A synchronous tag check fault: a data abort with DFSC 0x11.

    ``address`` is the faulting virtual address as FAR_ELx reports it (tag bits kept),
    ``logical_tag`` the pointer's tag, ``allocation_tag`` the tag found in memory.
    """

    address: int
    logical_tag: int
    allocation_tag: int
    write: bool

    @property
    def fsc(self) -> int:
        """The fault status code the fault reports: 0b010001, a synchronous tag check fault."""
        return FSC_TAG_CHECK

    def __str__(self) -> str:
        kind = "store" if self.write else "load"
        return (
            f"tag check fault on {kind} at {self.address:#018x}: pointer tag "
            f"{self.logical_tag:#x}, memory tag {self.allocation_tag:#x}"
        )


@dataclass
class UndefinedInstruction(ArchException):
    """The instruction is UNDEFINED in the current state (e.g. LDGM at EL0)."""

    mnemonic: str
    reason: str

    def __str__(self) -> str:
        return f"undefined instruction {self.mnemonic}: {self.reason}"


@dataclass
class TrappedInstruction(ArchException):
    """A system instruction that traps to EL1 from EL0 (ESR EC 0x18), e.g. DC GVA
    while SCTLR_EL1.DZE is 0."""

    mnemonic: str
    reason: str

    def __str__(self) -> str:
        return f"{self.mnemonic} traps to EL1: {self.reason}"
