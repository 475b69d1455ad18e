"""The tour's destination: a second tagvisor process that takes the held heap guest,
lets it go on to its next bug, and runs it to the end.

The tour's source starts the heap guest with HEAP_HOLD, so the guest spins between its
bugs until the VMM stores a word at HEAP_RELEASE: the migration's window then does not
depend on the host's speed, and the destination needs no time to run out a spin. It
releases the guest only after recording the digest of what arrived, so the digest
compares with the source's at the pause. Prints one JSON report on stdout, the form
`tagvisor incoming --json` prints.
"""

from __future__ import annotations

import json
import sys
from typing import Final

from tagvisor.cli.backend import MODEL_HEADROOM, MODEL_MTE_LEVEL
from tagvisor.cli.common import guest_summary
from tagvisor.conformance.programs import release
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming
from tagvisor.snapshot.guestpages import memory_digest

#: The largest guest the tour sends (its heap guest has 128 MiB).
MAX_RAM: Final = 256 << 20
#: Seconds to wait for the tour's source.
TIMEOUT: Final = 60.0


def main() -> int:
    """Listen on a free loopback port (announced on stderr), take one guest, run it."""
    kvm = ModelKvm(host_memory=MAX_RAM + MODEL_HEADROOM, host_mte_level=MODEL_MTE_LEVEL)
    listener = Listener(TcpAddress("127.0.0.1", 0))
    print(
        f"tagvisor tour destination: listening on {listener.address}", file=sys.stderr, flush=True
    )
    machine, report = incoming(kvm, listener, max_memory=MAX_RAM, timeout=TIMEOUT)
    arrived = memory_digest(machine)
    release(machine)
    result = machine.run()
    status = result.exit_status if result.exit_status is not None else 255
    summary = {
        **guest_summary(machine),
        "exit_status": status,
        "error": result.error,
        "pages_received": report.pages_received,
        "iterations": report.iterations,
        "digest_at_arrival": arrived,
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
