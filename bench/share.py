"""bench/run.py's figures for ``pyvmm run -- CMD`` and the share
(``--only command,share``).

- command: wall time of ``pyvmm run -- true`` and ``-- uname -r`` from
  process start to exit, restored from the cached snapshot (the first run
  makes it, untimed), and a cold one: ``--cmdline`` makes a guest the
  snapshot is not, so it boots.
- share: a 256 MiB file read through the share (``cat FILE > /dev/null``
  in the guest) and ``find`` over a tree of 10,000 files, each as the wall
  time of that run less the median of ``sh -c true`` runs, against the same
  command on the host (page cache warm in both), as a ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
FILE_MIB = 256
TREE_FILES = 10_000


def _timed(args: list[str], cwd: Path) -> float:
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pyvmm", "run", *args], cwd=cwd, capture_output=True, timeout=900
    )
    took = time.monotonic() - started
    if r.returncode != 0:
        raise SystemExit(f"bench: pyvmm run {' '.join(args)} failed: {r.stderr.decode()[-500:]}")
    return took


def _host(command: list[str], cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def command(runs: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        here = Path(d)
        _timed(["--", "true"], here)  # the snapshot, if it is not cached yet
        true = statistics.median(_timed(["--", "true"], here) for _ in range(runs))
        uname = statistics.median(_timed(["--", "uname", "-r"], here) for _ in range(runs))
        cold = _timed(["--cmdline", "pyvmm.bench=cold", "--", "true"], here)
    print(f"command: pyvmm run -- true restored {true:.2f} s (median of {runs}), "
          f"-- uname -r {uname:.2f} s; cold (boots) {cold:.1f} s")  # fmt: skip


def share(runs: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        here = Path(d)
        with open(here / "big", "wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(MiB))
        tree = here / "tree"
        for i in range(TREE_FILES):
            sub = tree / f"d{i // 100:03}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i:05}").touch()
        _timed(["--", "true"], here)
        base = statistics.median(_timed(["--", "sh", "-c", "true"], here) for _ in range(runs))
        read = _timed(["--", "sh", "-c", "cat big > /dev/null"], here) - base
        walk = _timed(["--", "sh", "-c", "find tree > /dev/null"], here) - base
        _host(["cat", "big"], here)  # into the page cache
        host_read = statistics.median(_host(["cat", "big"], here) for _ in range(runs))
        host_walk = statistics.median(_host(["find", "tree"], here) for _ in range(runs))
    print(f"share: read {FILE_MIB} MiB in {read:.1f} s ({FILE_MIB / read:.1f} MiB/s) vs host "
          f"{host_read:.2f} s: {read / host_read:.0f}x; find over {TREE_FILES} files "
          f"{walk:.1f} s vs host {host_walk * 1000:.0f} ms: {walk / host_walk:.0f}x")  # fmt: skip
