"""bench/run.py's live migration figures.

Each migration goes over a Unix socket from this process (the source,
``pyvmm.Machine.migrate``, downtime target 100 ms) to a ``pyvmm run
--incoming`` process (the destination). Printed for each: total time
(connect to the guest running there), downtime twice (guest paused here to
running there; and the state's last byte sent to the destination's word that
the guest runs), rounds with the pages each sent, and bytes sent.

- migrate-idle: the default Linux guest at 512 MiB, a clone of its cached
  snapshot, its shell idle. Against the pages it ever touched: the snapshot's
  memory pages that are not all zero (a zero page costs a marker, not data).
- migrate-dirty: the test guest at 512 MiB writing one word into each of
  ``rate`` pages a second, round a 64 MiB area, timed by the PIT
  (``action=dirty``).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyvmm
from pyvmm.migration.send import Report

MiB = 1 << 20
PAGE = 4096


def _destination(target: Path, memory: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--incoming", f"unix:{target}", "--memory", memory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _migrate(source: pyvmm.Machine, memory: str) -> Report:
    folder = Path(tempfile.mkdtemp(prefix="pyvmm-bench-"))
    target = folder / "in.sock"
    dst = _destination(target, memory)
    try:
        while not target.exists():
            time.sleep(0.02)
        return source.migrate(f"unix:{target}", max_downtime=0.1)
    finally:
        dst.send_signal(signal.SIGTERM)
        dst.wait()


def _line(what: str, reports: list[Report], against: str) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    r = sorted(reports, key=lambda r: r.total_seconds)[len(reports) // 2]  # the median run
    return (
        f"{what}, median of {len(reports)}: total {med([x.total_seconds for x in reports]):.2f} s, "
        f"downtime {med([x.downtime_seconds for x in reports]) * 1000:.0f} ms "
        f"(state sent to running {med([x.state_to_running_seconds for x in reports]) * 1000:.0f} "
        f"ms), rounds {r.rounds} (pages {'+'.join(map(str, r.per_round or []))}), "
        f"{med([x.bytes_sent for x in reports]) / MiB:.1f} MiB sent{against}"
    )


def _nonzero_pages(memory_file: Path) -> int:
    count = 0
    with open(memory_file, "rb") as f:
        while chunk := f.read(256 * PAGE):
            for i in range(0, len(chunk), PAGE):
                if chunk[i : i + PAGE].count(0) != PAGE:
                    count += 1
    return count


def idle(runs: int) -> None:
    from pyvmm import launch, snapshot_cache

    snap = snapshot_cache.default_snapshot(launch.make_config(memory="512M"))
    touched = _nonzero_pages(snap / "memory")
    reports = []
    for _ in range(runs):
        with pyvmm.Machine(restore=snap) as m:
            m.start()
            m.run("true")
            reports.append(_migrate(m, "512M"))
    sent = statistics.median(r.bytes_sent for r in reports)
    print(_line(
        "migrate-idle: default guest, 512 MiB, idle shell", reports,
        f" = {sent / (touched * PAGE):.2f}x the {touched} pages it touched "
        f"({touched * PAGE / MiB:.1f} MiB)",
    ))  # fmt: skip


def dirtying(runs: int, elf: Path, rates: tuple[int, ...] = (2_000, 20_000, 100_000)) -> None:
    for rate in rates:
        reports = []
        for _ in range(runs):
            with pyvmm.Machine(kernel=elf, memory="512M", cmdline=f"action=dirty rate={rate}") as m:
                m.start()
                m.wait_for(r"^dirtied \d+\n", timeout=60)
                reports.append(_migrate(m, "512M"))
        print(_line(
            f"migrate-dirty: test guest, 512 MiB, dirtying {rate} pages/s "
            f"({rate * PAGE / MiB:.0f} MiB/s)", reports, "",
        ))  # fmt: skip
