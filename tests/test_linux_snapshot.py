"""Clones of the default Linux guest (KVM): three restored at once from the
cached snapshot (its shell ready), each its own machine with the host's
wall clock, each powering off cleanly; a clone snapshotted again; and, on
hardware KVM, a clone that keeps time with the TSC."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvmm
from pyvmm.arch.x86_64 import pvm
from tests.snapshot_util import clock_error

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
        clocks.append(clock_error(clone))
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


CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


@pytest.mark.skipif(
    pvm.host_is_pvm(), reason="on PVM the guest's TSC is the host's, whatever the restore does"
)
def test_a_clone_keeping_time_with_the_tsc_sees_the_time_on_disk(
    pyvmm_factory: Callable[..., pyvmm.Machine], pyvmm_snapshot: Path, tmp_path: Path
) -> None:
    # Linux keeps time with the TSC where the CPU says it is invariant, as
    # most hosts' CPUs do; KVM gives a restored vCPU its TSC as saved.
    guest = pyvmm_factory(restore=pyvmm_snapshot).start()
    guest.run(f"echo tsc > {CLOCKSOURCE}")
    assert guest.run(f"cat {CLOCKSOURCE}").output == "tsc\n"
    guest.snapshot(tmp_path / "tsc")
    guest.close()
    time.sleep(5)  # on disk: a guest whose clock missed it would be 5 s behind, and more
    clone = pyvmm_factory(restore=tmp_path / "tsc").start()
    assert clone.run(f"cat {CLOCKSOURCE}").output == "tsc\n"
    assert abs(clock_error(clone)) <= 2
    assert clone.shutdown(timeout=120) == 0
