"""Build a machine, run a shipped guest on it, and read what it reported.

    .venv/bin/python examples/run_guest.py

Runs the heap guest on the software KVM (any host), with MTE in synchronous mode, and
prints its reports in words: the use-after-free and the overflow MTE caught.
"""

from __future__ import annotations

from tagvisor.guests.catalogue import BY_NAME
from tagvisor.guests.decode import ReportDecoder
from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm import MachineBuilder


def main() -> int:
    kvm = ModelKvm(host_memory=384 << 20, host_mte_level=3)  # a host with FEAT_MTE3
    machine = (
        MachineBuilder(kvm)
        .memory(128 << 20)
        .mte(tcf="sync")
        .image(BY_NAME["heap"].image)
        .build()  # paused, PC at the ELF's entry
    )
    result = machine.run()  # until the guest powers off
    decoder = ReportDecoder()
    for call in machine.ucall.calls:
        line = decoder.ucall(int(call.cmd), call.args)
        if line:
            print(line)
    print(f"the guest exited with status {result.exit_status} after {result.exits} exits")
    return 0 if result.exit_status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
