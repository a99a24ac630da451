"""The wall clock of a clone of the default Linux guest (KVM) whose snapshot
is too old for its clocks to be moved on: pyvmm.Machine sets it. Not marked
hwkvm: the guest's side is the same shell command on every host."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvmm
from pyvmm.arch.x86_64 import state
from tests.snapshot_util import clock_error, rewrite

pytestmark = pytest.mark.usefixtures("kvm")


def test_a_clone_of_an_old_snapshot_is_given_the_hosts_time(
    pyvmm_factory: Callable[..., pyvmm.Machine], pyvmm_snapshot: Path, tmp_path: Path
) -> None:
    # A guest whose clock is an hour slow, saved, and its snapshot made to
    # look older than the KVM clock may be moved on by: the restore leaves
    # the clock as saved and the Machine sets the guest's wall clock.
    slow = pyvmm_factory(restore=pyvmm_snapshot).start()
    slow.run(f"date -u -s @{int(time.time()) - 3600} > /dev/null")
    assert clock_error(slow) < -3000
    slow.snapshot(tmp_path / "old")
    slow.close()
    saved = state.CLOCK_JUMP_MAX_NS + 10**9
    created = time.time_ns() - saved
    rewrite(tmp_path / "old", {"vm.realtime": created})
    clone = pyvmm_factory(restore=tmp_path / "old").start()
    assert abs(clock_error(clone)) <= 2
    assert clone.shutdown(timeout=120) == 0
