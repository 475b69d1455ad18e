"""Live migration across backends: the model into a real KVM VM, and back.

One testbed boot runs both directions with the heap guest, paused in its use-after-free
report and held there (HEAP_HOLD) so the overflow always happens after the move:

1. model -> real: the image listens on :data:`GUEST_PORT` (forwarded from the host's
   loopback); the host boots the guest on the model and migrates it in. The real VM
   must find the same memory and tags, and the guest must catch its overflow there.
2. real -> model: the host listens on its loopback (the image reaches it at
   ``HOST_IP``); the image boots the guest under KVM and migrates it out, and the
   model carries on.

:func:`run` is the image's side; :func:`cross_backend_migration` the host's.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Final

from tagvisor.conformance.programs import TIMEOUT, receive_held_heap, send_held_heap
from tagvisor.migration import Listener, TcpAddress
from tagvisor.testbed.boot import HOST_IP, ConsoleWatch, Network, run_suite

GUEST_PORT: Final = 4444
ITERATIONS: Final = 4
CONFIG: Final = "crossing.json"
LISTENING: Final = "=== TAGVISOR-CROSSING-LISTENING"
SUITE_DIR: Final = Path("/opt/suite")


def run() -> dict[str, Any]:
    """The image's side (``python3 -m tagvisor.testbed.guest tagvisor.conformance.crossing``)."""
    from tagvisor.kvm.linux import LinuxKvm

    config = json.loads((SUITE_DIR / CONFIG).read_text())
    listener = Listener(TcpAddress("0.0.0.0", GUEST_PORT))  # reached through hostfwd only
    print(LISTENING, flush=True)
    into_real = receive_held_heap(LinuxKvm(), listener)
    address = TcpAddress(HOST_IP, int(config["host_port"]))
    out_of_real = send_held_heap(LinuxKvm(), address, max_iterations=ITERATIONS)
    return {"into_real": into_real, "out_of_real": out_of_real}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cross_backend_migration(kernel_suite: str = "6.1") -> dict[str, Any]:
    """Both directions in one testbed boot; the results of both sides."""
    from tagvisor.conformance.compare import (
        TESTBED_32BIT_EL1,
        TESTBED_MTE_LEVEL,
        profile_for,
    )
    from tagvisor.kvm.model import ModelKvm

    def model() -> ModelKvm:
        # The testbed's CPU and kernel, so the guest sees the same MTE level and the
        # same ID registers on both sides (a kernel refuses another's ID values).
        return ModelKvm(
            64 << 20,
            profile_for(kernel_suite),
            host_mte=True,
            host_mte_level=TESTBED_MTE_LEVEL,
            host_32bit_el1=TESTBED_32BIT_EL1,
        )

    inbound = Listener(TcpAddress("127.0.0.1", 0))
    forwarded = _free_port()

    def host_side(console: ConsoleWatch) -> dict[str, Any]:
        console.wait_for(LISTENING, TIMEOUT)
        sent = send_held_heap(
            model(), TcpAddress("127.0.0.1", forwarded), max_iterations=ITERATIONS
        )
        received = receive_held_heap(model(), inbound)
        return {"model_to_real": sent, "real_to_model": received}

    config = json.dumps({"host_port": inbound.address.port}).encode()
    try:
        run = run_suite(
            "tagvisor.conformance.crossing",
            kernel_suite=kernel_suite,
            files={CONFIG: config},
            network=Network(((forwarded, GUEST_PORT),)),
            alongside=host_side,
            timeout=300,
        )
    finally:
        inbound.close()
    if isinstance(run.host, Exception):
        raise run.host
    return {
        "kernel": run.kernel,
        "status": run.status,
        "error": run.error,
        "image": run.result,
        "host": run.host,
    }
