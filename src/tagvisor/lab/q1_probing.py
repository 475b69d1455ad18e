"""Question 1: probing for MTE - a KVM capability against a scratch VCPU.

Three probes, each run on hosts without MTE, with FEAT_MTE2 and with FEAT_MTE3
(asymmetric mode), under the upstream ABI and the seed's v2:

* ``capability``: KVM_CHECK_EXTENSION(KVM_CAP_ARM_MTE) on /dev/kvm.
* ``cap + ID register``: the capability, then a scratch VM with MTE enabled and a VCPU
  whose ID_AA64PFR1_EL1.MTE gives the level (what a VMM needs for asymmetric mode).
* ``scratch VCPU feature``: the seed's v2 way, a scratch VCPU initialised with the MTE
  feature bit (7), then the ID register. Upstream, bit 7 is KVM_ARM_VCPU_HAS_EL2.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import ID_AA64PFR1_EL1, SEED_V2_VCPU_FEATURE_MTE, Cap
from tagvisor.lab.counting import Counters, CountingVm
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table, ratio

#: (name, host has MTE, level).
HOSTS: Final = (("no MTE", False, 0), ("MTE2", True, 2), ("MTE3", True, 3))
PROFILES: Final = ("linux-6.13", "seed-v2")


def _level(vm: CountingVm, features: int) -> int:
    """A scratch VCPU's ID_AA64PFR1_EL1.MTE (bits 11:8)."""
    vcpu = vm.create_vcpu(0)
    init = vm.arm_preferred_target()
    init.features[0] = features
    vm.counters.ioctls["KVM_ARM_VCPU_INIT"] += 1
    vcpu.arm_vcpu_init(init)
    vm.counters.ioctls["KVM_GET_ONE_REG"] += 1
    return vcpu.get_one_reg(ID_AA64PFR1_EL1) >> 8 & 0xF


def capability(kvm: ModelKvm, counters: Counters) -> int | None:
    """2 if KVM_CAP_ARM_MTE is there (the least level it implies), 0 if not: presence only,
    never whether the host has MTE3."""
    counters.ioctls["KVM_CHECK_EXTENSION"] += 1
    return 2 if kvm.check_extension(Cap.ARM_MTE) else 0


def cap_and_id_register(kvm: ModelKvm, counters: Counters) -> int | None:
    """The capability, then a scratch MTE VM's VCPU's ID_AA64PFR1_EL1.MTE: the level (0 without
    the capability)."""
    counters.ioctls["KVM_CHECK_EXTENSION"] += 1
    if not kvm.check_extension(Cap.ARM_MTE):
        return 0
    counters.ioctls["KVM_CREATE_VM"] += 1
    vm = CountingVm(kvm.create_vm(), counters)
    vm.enable_cap(Cap.ARM_MTE)
    return _level(vm, 0)


def scratch_vcpu_feature(kvm: ModelKvm, counters: Counters) -> int | None:
    """The seed v2 probe: ID_AA64PFR1_EL1.MTE of a scratch VCPU initialised with feature bit 7,
    or 0 if the kernel refuses the bit."""
    counters.ioctls["KVM_CREATE_VM"] += 1
    vm = CountingVm(kvm.create_vm(), counters)
    try:
        return _level(vm, 1 << SEED_V2_VCPU_FEATURE_MTE)
    except KvmError:
        return 0


PROBES: Final[dict[str, Callable[[ModelKvm, Counters], int | None]]] = {
    "capability": capability,
    "cap + ID register": cap_and_id_register,
    "scratch VCPU feature": scratch_vcpu_feature,
}
#: What a probe can say at most: presence only, or the level too.
TELLS_LEVEL: Final = {"capability": False, "cap + ID register": True, "scratch VCPU feature": True}


def measure(probe: str, profile: str, host: tuple[str, bool, int], repeat: int) -> dict[str, Any]:
    """One probe on one host: its answer, ioctls per probe, seconds per probe."""
    _, mte, level = host
    kvm = ModelKvm(64 << 20, profile, host_mte=mte, host_mte_level=max(level, 2))
    counters = Counters()
    answer = PROBES[probe](kvm, counters)
    started = time.perf_counter()
    for _ in range(repeat):
        PROBES[probe](kvm, Counters())
    seconds = (time.perf_counter() - started) / repeat
    present_right = bool(answer) == mte
    level_right = TELLS_LEVEL[probe] and (answer or 0) == level
    return {
        "answer_level": answer,
        "ioctls": counters.syscalls,
        "seconds": seconds,
        "presence_right": present_right,
        "level_right": bool(level_right),
    }


def _key(profile: str, host: str) -> str:
    return f"{profile} / {host}"


def _conclusion(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    upstream = _key("linux-6.13", "MTE3")
    cap, full = results["capability"][upstream], results["cap + ID register"][upstream]
    seed = results["scratch VCPU feature"][_key("seed-v2", "MTE3")]

    def right(probe: str, profile: str, what: str) -> int:
        return sum(results[probe][_key(profile, h[0])][what] for h in HOSTS)

    return (
        f"The capability answers in {cap['ioctls']} ioctl ({cap['seconds'] * 1e6:.1f} us in "
        f"the model) and got presence right on "
        f"{right('capability', 'linux-6.13', 'presence_right')} of {len(HOSTS)} upstream "
        f"hosts, but told the level (MTE2 or MTE3, i.e. whether "
        f"asymmetric mode exists) on {right('capability', 'linux-6.13', 'level_right')}: for "
        f"that a VMM still needs a scratch VCPU's ID_AA64PFR1_EL1, {full['ioctls']} ioctls "
        f"({ratio(full['seconds'], cap['seconds']):.1f}x the time), right on "
        f"{right('cap + ID register', 'linux-6.13', 'level_right')} of {len(HOSTS)}. The "
        f"seed's scratch VCPU with feature bit 7 took {seed['ioctls']} ioctls "
        f"({ratio(seed['seconds'], cap['seconds']):.1f}x) and told presence and level on "
        f"{right('scratch VCPU feature', 'seed-v2', 'level_right')} of {len(HOSTS)} seed-v2 "
        f"hosts, but upstream bit 7 is HAS_EL2: it was right on "
        f"{right('scratch VCPU feature', 'linux-6.13', 'presence_right')} of {len(HOSTS)} "
        f"upstream hosts, and the capability on "
        f"{right('capability', 'seed-v2', 'presence_right')} of {len(HOSTS)} seed-v2 hosts."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 1: every probe on every host and ABI, what it answered and whether rightly, and
    its ioctls and time per probe."""
    repeat = scale.pick(200, 5000)
    results: dict[str, dict[str, dict[str, Any]]] = {probe: {} for probe in PROBES}
    total, done = len(PROBES) * len(PROFILES) * len(HOSTS), 0
    table = Table(["probe", "ABI / host", "ioctls", "us", "says", "presence", "level"])
    for probe in PROBES:
        for profile in PROFILES:
            for host in HOSTS:
                figures = measure(probe, profile, host, repeat)
                results[probe][_key(profile, host[0])] = figures
                answer = figures["answer_level"]
                says = "no MTE" if not answer else (f"MTE{answer}" if TELLS_LEVEL[probe] else "MTE")
                table.rows.append(
                    [
                        probe,
                        _key(profile, host[0]),
                        figures["ioctls"],
                        round(figures["seconds"] * 1e6, 1),
                        says,
                        "right" if figures["presence_right"] else "WRONG",
                        "right"
                        if figures["level_right"]
                        else "cannot tell"
                        if not TELLS_LEVEL[probe]
                        else "WRONG",
                    ]
                )
                done += 1
                progress(done / total)
    upstream = _key("linux-6.13", "MTE3")
    charts = [
        Chart(
            "cost per probe (linux-6.13, MTE3 host)",
            "x capability",
            {
                "ioctls": {
                    p: ratio(
                        results[p][upstream]["ioctls"], results["capability"][upstream]["ioctls"]
                    )
                    for p in PROBES
                },
                "time": {
                    p: ratio(
                        results[p][upstream]["seconds"], results["capability"][upstream]["seconds"]
                    )
                    for p in PROBES
                },
            },
        ),
        Chart(
            "hosts answered right (of 3)",
            "hosts",
            {
                f"{profile}: {what}": {
                    p: float(sum(results[p][_key(profile, h[0])][f"{what}_right"] for h in HOSTS))
                    for p in PROBES
                }
                for profile in PROFILES
                for what in ("presence", "level")
            },
        ),
    ]
    return Outcome(
        name="probing",
        question=1,
        figures={"repeat": repeat, "results": results},
        table=table,
        charts=charts,
        conclusion=_conclusion(results),
    )


EXPERIMENT: Final = Experiment(
    "probing", 1, "a KVM capability against a scratch VCPU: cost and what each tells", run
)
