"""The testbed's second VM process (tagvisor.testbed.vm_process), without a testbed:
its console relay and how it reports a failure. The session test runs it for real."""

from __future__ import annotations

from typing import Any

import pytest

from tagvisor.testbed.vm_process import VmProcess, _LineSink
from tagvisor.testbed.workload import WorkloadError


def test_the_childs_console_goes_to_the_parent_a_whole_line_at_a_time() -> None:
    """Scenario: the guest writes "READY 1\\nTI" a byte at a time: one message with the
    whole first line crosses, the unfinished one waits for its newline."""
    sent: list[tuple[str, Any]] = []
    sink = _LineSink(sent.append)
    for byte in b"READY 1\nTI":
        sink(bytes([byte]))
    assert sent == [("console", b"READY 1\n")]
    for byte in b"CK\n":
        sink(bytes([byte]))
    assert sent[-1] == ("console", b"TICK\n")


def arrival(vm: VmProcess) -> Any:
    """What the session waits for: the child listening, then its guest arrived."""
    vm.wait("listening", 60.0)
    return vm.wait("arrived", 60.0)


def test_a_vm_process_whose_guest_never_comes_says_why() -> None:
    """Scenario: a VM process waits one second for a migrating guest and none comes
    (or, on a host without /dev/kvm, it cannot open KVM at all): the parent's wait is
    a WorkloadError with the child's reason, not a hang or a traceback."""
    lines: list[bytes] = []
    vm = VmProcess(lines.append, deadline=1.0)
    try:
        with pytest.raises(WorkloadError, match=r"the VM's process failed: \w+Error: .+"):
            arrival(vm)
    finally:
        vm.close()
    assert lines == []
