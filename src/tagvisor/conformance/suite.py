"""The testbed suite: every conformance scenario against the real ``/dev/kvm``.

Run inside the testbed image by ``python3 -m tagvisor.testbed.guest
tagvisor.conformance.suite``; returns ``{scenario: result}`` plus the backend's name.
"""

from __future__ import annotations

import os
from typing import Any

from tagvisor.conformance.scenarios import run_all
from tagvisor.kvm.linux import LinuxKvm
from tagvisor.testbed.boot import PAGECACHE_DIR


def run() -> dict[str, Any]:
    """The scenarios on the image's real ``/dev/kvm`` (only those ``$TAGVISOR_SCENARIOS`` names,
    if set), file memslots in the page-cache mount when there is one; with the backend's name
    and that directory."""
    only = [name for name in os.environ.get("TAGVISOR_SCENARIOS", "").split(",") if name]
    # File memslots are backed by page cache there, as the model's map_file is.
    file_dir = PAGECACHE_DIR if os.path.ismount(PAGECACHE_DIR) else None
    results = run_all(lambda: LinuxKvm(file_dir=file_dir), "linux", only or None)
    return {"backend": "linux", "file_dir": file_dir, "scenarios": results}
