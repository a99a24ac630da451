"""bench/run.py's snapshot figures.

- restore: the counting test guest snapshotted at 256 MiB and at 4 GiB;
  in-process, the restore alone (``build_from_snapshot``) and
  ``Machine(restore=...).start()`` until it returns with the vCPUs running;
  as a command, exec of ``pyvmm run --restore`` to the guest's first
  console byte (which includes the guest's own delay loop between lines).
- run: ``run("true")`` on the default guest: restored from its snapshot,
  from process start to the result; against a cold boot of the same guest.
- clones: RSS and PSS of each of four clones of one default-guest snapshot
  after each ran a command (PSS splits shared pages among their users: the
  memory file's page cache is shared).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyvmm
from pyvmm.snapshot.restore import build_from_snapshot
from pyvmm.vmm.lifecycle import Console

MiB = 1 << 20


def _snapshot_counting(elf: Path, memory: str, into: Path) -> Path:
    with pyvmm.Machine(kernel=elf, memory=memory, cmdline="action=count") as m:
        m.start()
        m.wait_for(r"^count 5\n", timeout=60)
        m.snapshot(into)
    return into


def restore(runs: int, elf: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pyvmm-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for memory in ("256M", "4G"):
        snap = _snapshot_counting(elf, memory, tmp / f"snap-{memory}")
        alone, first = [], []
        for _ in range(runs):
            start = time.perf_counter()
            vmm = build_from_snapshot(snap, Console(lambda data: None, lambda: 1 << 30))
            alone.append(time.perf_counter() - start)
            vmm.close()
            start = time.perf_counter()
            with pyvmm.Machine(restore=snap) as m:
                m.start()
                first.append(time.perf_counter() - start)
        cmd = [sys.executable, "-m", "pyvmm", "run", "--restore", str(snap)]
        exec_times = []
        for _ in range(runs):
            start = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            proc.stdout.read(1)
            exec_times.append(time.monotonic() - start)
            proc.kill()
            proc.wait()
        print(
            f"restore: test guest, --memory {memory}, median of {runs}: restore alone "
            f"{statistics.median(alone) * 1000:.1f} ms; Machine(restore=...).start() "
            f"{statistics.median(first) * 1000:.1f} ms; exec of pyvmm run --restore to the "
            f"guest's first byte {statistics.median(exec_times) * 1000:.0f} ms"
        )


def run_true(runs: int) -> None:
    """run("true") on the default guest, restored against booted."""
    from pyvmm import launch, snapshot_cache

    config = launch.make_config(memory="512M")
    snap = snapshot_cache.default_snapshot(config)  # booted once if not cached
    script = (
        "import sys, time; t = time.monotonic(); import pyvmm; "
        "m = pyvmm.Machine(restore=sys.argv[1]) if sys.argv[1] != 'boot' else pyvmm.Machine(); "
        "m.start(); r = m.run('true', timeout=900); m.close(); "
        "print(time.monotonic() - t, r.status)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def once(arg: str) -> float:
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", script, arg], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[1] == "0", out
        return time.monotonic() - start

    restored = [once(str(snap)) for _ in range(runs)]
    booted = once("boot")
    print(
        f"run: run('true') on the default guest, process start to result: restored "
        f"{statistics.median(restored):.2f} s (median of {runs}), cold boot {booted:.1f} s"
    )


CLONE = """
import sys, time, pyvmm
m = pyvmm.Machine(restore=sys.argv[1])
m.start()
m.run("ls -R /bin /etc > /dev/null; md5sum /bin/busybox > /dev/null", timeout=120)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
m.close()
"""


def clones(count: int = 4) -> None:
    from pyvmm import launch, snapshot_cache

    snap = snapshot_cache.default_snapshot(launch.make_config(memory="512M"))
    procs = [
        subprocess.Popen([sys.executable, "-c", CLONE, str(snap)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        figures = []
        for p in procs:
            rss = pss = 0
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
            figures.append((rss, pss))
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.write("\n")
                p.stdin.close()
            p.wait()
    rss = statistics.median(r for r, _ in figures) / MiB
    pss = statistics.median(p for _, p in figures) / MiB
    total = sum(p for _, p in figures) / MiB
    print(
        f"clones: {count} clones of one 512 MiB default-guest snapshot, each after a command: "
        f"RSS {rss:.0f} MiB, PSS {pss:.0f} MiB each (median), PSS {total:.0f} MiB together"
    )
