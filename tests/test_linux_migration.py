"""Live migration of the default Linux guest (KVM): a clone of the cached
snapshot is moved in the middle of a run() of a shell loop that writes a
file in /tmp; the loop finishes on the destination, and the file is whole."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvmm

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

LINES = 60
PAUSE_AT = 10


def test_a_shell_loop_finishes_on_the_destination(
    pyvmm_factory: Callable[..., pyvmm.Machine],
    pyvmm_snapshot: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    src = pyvmm_factory(restore=pyvmm_snapshot).start()
    # Each line goes to the file and the console. After line 10 the loop
    # waits for a line of input, which only the destination gives it, so it
    # is still going when the guest moves however slow the host is.
    loop = (
        f"for i in $(seq {LINES}); do echo line-$i >> /tmp/loop; echo line-$i; "
        f"if [ $i = {PAUSE_AT} ]; then read -r go; fi; usleep 50000; done"
    )
    ended_here: list[BaseException] = []

    def run_the_loop() -> None:
        try:
            src.run(loop, timeout=600)
        except pyvmm.GuestExited as e:
            ended_here.append(e)

    runner = threading.Thread(target=run_the_loop, daemon=True)
    runner.start()
    src.wait_for(r"^line-5\n", timeout=120)

    target = f"unix:{tmp_path / 'in.sock'}"
    dst = pyvmm_factory(incoming=target, memory=request.config.option.pyvmm_memory)
    started = threading.Thread(target=dst.start, daemon=True)
    started.start()
    while not (tmp_path / "in.sock").exists():
        time.sleep(0.05)
    report = src.migrate(target)
    started.join(60)
    runner.join(60)
    print(f"\n{report.rounds} rounds, {report.pages} pages, {report.bytes_sent} bytes, "
          f"downtime {report.downtime_seconds * 1000:.0f} ms")  # fmt: skip
    assert src.exit_status == 8  # the source ends: its guest lives on elsewhere
    assert len(ended_here) == 1  # and its run() says the guest is gone

    # The loop's last lines, and the shell's end marker for that run(), come
    # out on the destination's console.
    dst.send("go\n")
    done = dst.wait_for(r"PYVMM-END-\w+ (\d+)\n", timeout=300)
    assert done.group(1) == "0"  # type: ignore[attr-defined]
    moved_at = int(re.findall(r"^line-(\d+)\n", src.console, re.M)[-1])
    assert moved_at <= PAUSE_AT
    assert f"line-{LINES}\n" in dst.console
    lines = dst.run("cat /tmp/loop").output.splitlines()
    assert lines == [f"line-{i}" for i in range(1, LINES + 1)]
    assert dst.shutdown(timeout=120) == 0
