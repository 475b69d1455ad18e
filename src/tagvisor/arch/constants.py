"""Sizes fixed by the architecture (Arm ARM, FEAT_MTE2) and by Linux's page size."""

from typing import Final

LOG2_TAG_GRANULE: Final = 4
#: Bytes covered by one allocation tag.
TAG_GRANULE: Final = 1 << LOG2_TAG_GRANULE
#: Tags are 4 bits wide; logical tags live in pointer bits 59:56.
TAG_BITS: Final = 4
TAG_MASK: Final = (1 << TAG_BITS) - 1
ALL_TAGS_MASK: Final = 0xFFFF

#: Linux's base page on arm64 in tagvisor (4 KiB granule).
PAGE_SIZE: Final = 4096
GRANULES_PER_PAGE: Final = PAGE_SIZE // TAG_GRANULE
#: Tags of one page in the packed format (two per byte) that swap and core dumps use:
#: arch/arm64/include/asm/mte-def.h MTE_PAGE_TAG_STORAGE = 128.
PACKED_TAGS_PER_PAGE: Final = GRANULES_PER_PAGE // 2
