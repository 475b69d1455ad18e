"""The testbed suite: every conformance scenario against the real ``/dev/kvm``.

Run inside the testbed image by ``python3 -m tagvisor.testbed.guest
tagvisor.conformance.suite``; returns ``{scenario: result}`` plus the backend's name.
"""

from __future__ import annotations

import os
from typing import Any

from tagvisor.conformance.scenarios import run_all
from tagvisor.kvm.linux import LinuxKvm


def run() -> dict[str, Any]:
    only = [name for name in os.environ.get("TAGVISOR_SCENARIOS", "").split(",") if name]
    return {"backend": "linux", "scenarios": run_all(LinuxKvm, "linux", only or None)}
