"""Linux with several vCPUs (KVM): the default guest booted with --cpus 2 and
--cpus 4 side by side sees its processors, each takes its own timer
interrupts and runs work pinned to it, and the guest powers off cleanly."""

from __future__ import annotations

import re

import pytest

import pyvmm

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

BOOT_TIMEOUT = 900


def local_timer_counts(interrupts: str) -> list[int]:
    """The per-CPU counts of the LOC line of /proc/interrupts."""
    m = re.search(r"^\s*LOC:((?:\s+\d+)+)", interrupts, re.M)
    assert m, interrupts
    return [int(n) for n in m.group(1).split()]


def test_linux_uses_every_vcpu() -> None:
    machines = {n: pyvmm.Machine(memory="256M", cpus=n) for n in (2, 4)}
    try:
        for m in machines.values():
            m.start()  # both boot at once
        for n, m in machines.items():
            assert m.run("nproc", timeout=BOOT_TIMEOUT).output == f"{n}\n"
            before = local_timer_counts(m.run("cat /proc/interrupts").output)
            assert len(before) == n and all(count > 0 for count in before), before
            # One process pinned to each CPU reports where it ran (field 39 of stat).
            pinned = "taskset -c $c awk '{print $39}' /proc/self/stat"
            where = m.run(f"for c in $(seq 0 {n - 1}); do {pinned}; done")
            assert where.status == 0 and where.output.split() == [str(c) for c in range(n)]
            after = local_timer_counts(m.run("cat /proc/interrupts").output)
            assert sum(after) > sum(before)
        for m in machines.values():
            assert m.shutdown(timeout=120) == 0
    finally:
        for m in machines.values():
            m.close()
