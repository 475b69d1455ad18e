"""The pages of a snapshot file, read back from its PAGE sections: what the tour shows
of a snapshot (and what `inspect` would count), from the file rather than the guest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.snapshot import pages
from tagvisor.snapshot.container import END_TAG, iter_sections, read_header
from tagvisor.snapshot.pages import PageRun
from tagvisor.snapshot.registry import REGISTRY, Phase
from tagvisor.snapshot.snapshot import END_LIMIT, MAGIC, VERSION

#: A 4 KiB page holds 256 granules of 16 bytes, one tag each.
GRANULES_PER_PAGE = PAGE_SIZE // 16


def stored_runs(path: Path) -> Iterator[PageRun]:
    """Every run of pages the snapshot stores, in file order. Read it with
    tagvisor.snapshot.read_snapshot first: this reader checks only what it reads."""
    limits = REGISTRY.limits(Phase.SETUP, Phase.ITERATE, Phase.COMPLETE)
    limits[END_TAG] = END_LIMIT
    with path.open("rb") as source:
        read_header(source, MAGIC, VERSION.major)
        for section in iter_sections(source, limits):
            if section.tag == b"PAGE":
                yield pages.decode(section.payload)


def page_tags(path: Path, gpa: int) -> NDArray[np.uint8]:
    """The 256 granule tags the snapshot holds for the page at ``gpa`` (zeros for a
    page it does not store: such a page is all zeros, tags included)."""
    page = gpa - gpa % PAGE_SIZE
    for run in stored_runs(path):
        for index, row in zip(run.indices(), run.tags, strict=True):
            if run.gpa + int(index) * PAGE_SIZE == page:
                return np.array(row, dtype=np.uint8)
    return np.zeros(GRANULES_PER_PAGE, dtype=np.uint8)
