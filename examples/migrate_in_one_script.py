"""Live-migrate a running guest between two machines in one script: the destination
listens on a thread, the source sends while the guest runs, and both sides' memory and
tags are compared.

    .venv/bin/python examples/migrate_in_one_script.py
"""

from __future__ import annotations

import threading

from tagvisor.guests.catalogue import BY_NAME
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming, migrate
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import Machine, MachineBuilder

RAM = 128 << 20


def host() -> ModelKvm:
    return ModelKvm(host_memory=RAM + (256 << 20), host_mte_level=3)


def main() -> int:
    source = (
        MachineBuilder(host())
        .memory(RAM)
        .mte(tcf="sync")
        .argument(200)  # churn: 200 rounds of allocating, freeing and retagging
        .image(BY_NAME["churn"].image)
        .build()
    )
    source.run(max_exits=200)  # let it get going

    listener = Listener(TcpAddress("127.0.0.1", 0))  # port 0: any free port
    arrived: list[Machine] = []
    receiver = threading.Thread(
        target=lambda: arrived.append(incoming(host(), listener, timeout=60)[0])
    )
    receiver.start()
    report = migrate(source, listener.address)  # pre-copy while the guest runs
    receiver.join(60)
    destination = arrived[0]
    same = memory_digest(destination) == memory_digest(source)
    print(
        f"{report.iterations} passes, {report.pages_sent} pages, {report.tag_bytes} tag "
        f"bytes, downtime {report.downtime_seconds * 1e3:.1f} ms; memory and tags "
        f"{'equal' if same else 'DIFFER'}"
    )
    result = destination.run()  # the guest finishes its rounds at the destination
    print(f"the guest finished at the destination with status {result.exit_status}")
    return 0 if same and result.exit_status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
