"""Live migration of the default Linux guest (KVM): a shell loop writing a
file is moved mid-way from a clone of the cached snapshot to a destination
machine, finishes there, and the file is whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvmm

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

LINES = 60


def until(condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


def test_a_shell_loop_finishes_on_the_destination(
    pyvmm_factory: Callable[..., pyvmm.Machine],
    pyvmm_snapshot: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    src = pyvmm_factory(restore=pyvmm_snapshot).start()
    # Paced so that it is still going when the guest moves, even on hardware KVM.
    src.run(
        f"(for i in $(seq {LINES}); do echo line-$i >> /tmp/loop; usleep 100000; done;"
        " touch /tmp/done) > /dev/null 2>&1 &"
    )
    until(lambda: int(src.run("cat /tmp/loop 2>/dev/null | wc -l").output) >= 5)

    target = f"unix:{tmp_path / 'in.sock'}"
    dst = pyvmm_factory(incoming=target, memory=request.config.option.pyvmm_memory)
    started = threading.Thread(target=dst.start, daemon=True)
    started.start()
    while not (tmp_path / "in.sock").exists():
        time.sleep(0.05)
    report = src.migrate(target)
    started.join(60)
    print(f"\n{report.rounds} rounds, {report.pages} pages, {report.bytes_sent} bytes, "
          f"downtime {report.downtime_seconds * 1000:.0f} ms")  # fmt: skip
    assert src.exit_status == 8  # the source ends: its guest lives on elsewhere

    assert int(dst.run("cat /tmp/loop 2>/dev/null | wc -l").output) < LINES  # it moved mid-way
    until(lambda: dst.run("test -f /tmp/done").status == 0)
    lines = dst.run("cat /tmp/loop").output.splitlines()
    assert lines == [f"line-{i}" for i in range(1, LINES + 1)]
    assert dst.shutdown(timeout=120) == 0
