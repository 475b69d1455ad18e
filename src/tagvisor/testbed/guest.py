"""The in-image side of the testbed: run a suite and print its results, framed.

``/init`` runs ``python3 -m tagvisor.testbed.guest <module>``. The module's ``run()``
returns anything JSON can hold. Its results reach the host through the serial console
only, so they are printed as base64 lines between markers with a SHA-256, which the
host checks (kernel messages may share the console; /init also lowers the console log
level so they rarely do).

Standard library only: this runs inside the minimal arm64 image.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Final

BEGIN: Final = "=== TAGVISOR-RESULTS-BEGIN"
END: Final = "=== TAGVISOR-RESULTS-END"
LINE: Final = "@@TVR"
CHUNK: Final = 96


def frame(payload: dict[str, Any]) -> list[str]:
    """The console lines that carry ``payload`` (parsed back by :func:`unframe`)."""
    data = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    digest = hashlib.sha256(data.encode()).hexdigest()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    lines = [f"{BEGIN} {len(chunks)} {digest}"]
    lines += [f"{LINE} {i} {chunk}" for i, chunk in enumerate(chunks)]
    lines.append(END)
    return lines


def kernel_log() -> list[str]:
    """The kernel's MTE and KVM lines (what the host reports about the boot)."""
    try:
        out = subprocess.run(
            ["/bin/busybox", "dmesg"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = ("Memory Tagging", "kvm", "KVM", "MTE")
    return [line for line in out.splitlines() if any(key in line for key in keys)][:40]


def main(argv: list[str]) -> int:
    """Import the suite module ``argv[1]``, call its ``run()``, and print the result (or the
    traceback) with the kernel, machine, Python version, time taken and the kernel's MTE and KVM
    lines, framed; the exit status is 0 if the suite returned, 1 if it raised, 2 on a usage
    error."""
    if len(argv) != 2:
        print("usage: python3 -m tagvisor.testbed.guest <suite module>", file=sys.stderr)
        return 2
    started = time.monotonic()
    status = 0
    result: Any = None
    error = None
    try:
        module = importlib.import_module(argv[1])
        result = module.run()
    except BaseException:  # report everything, even SystemExit, to the host
        status = 1
        error = traceback.format_exc()
        print(error, file=sys.stderr, flush=True)
    payload = {
        "status": status,
        "error": error,
        "result": result,
        "kernel": os.uname().release,
        "machine": os.uname().machine,
        "python": sys.version.split()[0],
        "seconds": round(time.monotonic() - started, 3),
        "dmesg": kernel_log(),
    }
    try:
        lines = frame(payload)
    except (TypeError, ValueError) as exc:  # the suite returned something JSON cannot hold
        payload.update(status=1, result=None, error=f"results are not JSON: {exc}")
        lines = frame(payload)
    sys.stdout.flush()
    for line in lines:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
