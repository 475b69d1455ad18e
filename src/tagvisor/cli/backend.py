"""Which KVM runs the guest: the real /dev/kvm where it can run MTE guests, else the
software model, and the CLI always says which one it is and why.

``--backend auto`` (the default) takes the real KVM on an arm64 host whose /dev/kvm
offers KVM_CAP_ARM_MTE, and the model otherwise; ``--backend linux`` refuses with one
line saying what is missing when the real KVM cannot serve; ``--backend model``
always takes the model. The model's host has FEAT_MTE3, like the testbed's CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Final

from tagvisor.cli.errors import CliError, Exit
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import DEFAULT_PROFILE, PROFILES, ModelKvm
from tagvisor.kvm.uapi import Cap

BACKENDS: Final = ("auto", "linux", "model")
DEVICE: Final = "/dev/kvm"
#: The model host's MTE feature level: FEAT_MTE3, so asymmetric checking is real.
MODEL_MTE_LEVEL: Final = 3
#: Host memory the model keeps beyond the guest's RAM (page tables, the VMM's own).
MODEL_HEADROOM: Final = 256 << 20


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and the model's --profile."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="the real /dev/kvm (linux), the software KVM (model), or auto (default): "
        "linux on an arm64 host whose /dev/kvm offers KVM_CAP_ARM_MTE, else model",
    )
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),  # oldest kernel first, as the generations go
        default=DEFAULT_PROFILE,
        help=f"kernel ABI the model follows (default {DEFAULT_PROFILE})",
    )


def linux_unavailable(device: str = DEVICE) -> str | None:
    """Why the real KVM cannot run MTE guests here (one clause), or None if it can."""
    machine = platform.machine()
    if machine not in ("aarch64", "arm64"):
        return f"this host is {machine}, and KVM runs arm64 guests only on an arm64 host"
    if not os.path.exists(device):
        return f"there is no {device} (load the kvm module, or enable nested virtualisation)"
    try:
        from tagvisor.kvm.linux import LinuxKvm

        kvm = LinuxKvm(device)
    except KvmError as error:
        return f"{device} cannot be opened ({error}): join the kvm group or run as root"
    try:
        if not kvm.check_extension(Cap.ARM_MTE):
            return f"{device} does not offer KVM_CAP_ARM_MTE (no MTE in this CPU or kernel)"
    finally:
        kvm.close()
    return None


def choose(args: argparse.Namespace, memory: int, *, prealloc: int = 0) -> Kvm:
    """The KVM the command runs on, announced on stderr; sets ``args.backend_name``."""
    if args.backend in ("auto", "linux"):
        missing = linux_unavailable()
        if missing is None:
            return _linux(args, prealloc)
        if args.backend == "linux":
            raise CliError(
                f"--backend linux: {missing}; use --backend model for the software KVM",
                Exit.UNAVAILABLE,
                "unavailable",
            )
        why = f"auto: the real KVM is not usable here, {missing}"
    else:
        why = "--backend model"
    args.backend_name = "model"
    _say(args, f"backend: model, FEAT_MTE{MODEL_MTE_LEVEL}, profile {args.profile} ({why})")
    return ModelKvm(
        host_memory=memory + MODEL_HEADROOM,
        profile=args.profile,
        prealloc=prealloc,
        host_mte_level=MODEL_MTE_LEVEL,
    )


def _linux(args: argparse.Namespace, prealloc: int) -> Kvm:
    from tagvisor.kvm.linux import LinuxKvm

    kvm = LinuxKvm(DEVICE)
    args.backend_name = "linux"
    level = kvm.mte_feature_level()
    _say(args, f"backend: linux ({DEVICE}, FEAT_MTE{level})")
    if prealloc:
        _say(args, "warning: --prealloc applies to the model only; nothing is preallocated")
    if getattr(args, "tcf", None) == "asymm" and level < 3:
        _say(args, "warning: this CPU has no FEAT_MTE3: the guest checks asymm as sync")
    return kvm


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "json", False):
        print(f"tagvisor: {message}", file=sys.stderr, flush=True)
