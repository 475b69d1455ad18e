"""The Arm MTE architecture: tag storage, tagged pointers, tag checks, MTE instructions.

This layer knows nothing of hosts, hypervisors or guests. It models FEAT_MTE2 and
FEAT_MTE3 as the Arm ARM specifies them and as QEMU emulates them, and every layer
above reaches tags through it.
"""

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.errors import (
    AlignmentFault,
    ArchError,
    ArchException,
    ArchUsageError,
    GranuleRangeError,
    RegisterValueError,
    TagCheckFault,
    TagValueError,
    TrappedInstruction,
    UndefinedInstruction,
)
from tagvisor.arch.memory import NO_TAG, FlatTaggedMemory, TagMemory
from tagvisor.arch.pointer import allocation_tag_from_address, strip_top_byte, with_tag
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import TagCheckMode
from tagvisor.arch.tagcheck import CheckOutcome, access_is_tag_checked, check_access
from tagvisor.arch.tagstore import TagStorage

__all__ = [
    "GRANULES_PER_PAGE",
    "NO_TAG",
    "PAGE_SIZE",
    "TAG_GRANULE",
    "AlignmentFault",
    "ArchError",
    "ArchException",
    "ArchUsageError",
    "CheckOutcome",
    "FlatTaggedMemory",
    "GranuleRangeError",
    "MteState",
    "RegisterValueError",
    "TagCheckFault",
    "TagCheckMode",
    "TagMemory",
    "TagStorage",
    "TagValueError",
    "TrappedInstruction",
    "UndefinedInstruction",
    "access_is_tag_checked",
    "allocation_tag_from_address",
    "check_access",
    "strip_top_byte",
    "with_tag",
]
