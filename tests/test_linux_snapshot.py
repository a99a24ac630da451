"""Clones of the default Linux guest (KVM): three restored at once from the
cached snapshot (its shell ready), each its own machine with the host's
wall clock, each powering off cleanly; and a clone snapshotted again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvmm

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def test_three_clones_at_once(
    pyvmm_factory: Callable[..., pyvmm.Machine], pyvmm_snapshot: Path
) -> None:
    started = time.monotonic()
    clones = [pyvmm_factory(restore=pyvmm_snapshot).start() for _ in range(3)]
    restored = time.monotonic() - started
    print(f"\nthree clones restored in {restored:.2f} s")
    pids, clocks = [], []
    for i, clone in enumerate(clones):
        # Each clone starts a different number of processes first: their
        # process tables go their own ways from the same snapshot.
        r = clone.run(f"for i in $(seq {5 * (i + 1)}); do /bin/true; done; sh -c 'echo $$'")
        pids.append(int(r.output))
        clone.run(f"echo clone-{i} > /tmp/mine")
        before = time.time()
        said = int(clone.run("date +%s").output)
        # 0 when the guest's second lies within the host's while run() waited
        clocks.append(min(0, said - int(before)) + max(0, said - time.time()))
    assert len(set(pids)) == 3
    for i, clone in enumerate(clones):
        assert clone.run("cat /tmp/mine").output == f"clone-{i}\n"  # nobody else's write
    assert all(abs(c) <= 2 for c in clocks), clocks
    for clone in clones:
        assert clone.shutdown(timeout=120) == 0


def test_a_clone_is_snapshotted_again(
    pyvmm_factory: Callable[..., pyvmm.Machine], pyvmm_snapshot: Path, tmp_path: Path
) -> None:
    clone = pyvmm_factory(restore=pyvmm_snapshot).start()
    clone.run("echo from-the-clone > /tmp/marker")
    clone.snapshot(tmp_path / "again")
    assert clone.run("echo still here").output == "still here\n"
    second = pyvmm_factory(restore=tmp_path / "again").start()
    assert second.run("cat /tmp/marker").output == "from-the-clone\n"
    assert second.shutdown(timeout=120) == 0
