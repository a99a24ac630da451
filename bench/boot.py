"""Boot benchmark: how long the default guest takes to reach userspace.

    python bench/boot.py [--runs 3] [--guest auto|stock|small] [--memory 512M] [-- ARGS...]

For each run it starts ``pyvmm run`` with a one-command guest and prints the
time from process start to the first line /init prints, the guest's own
uptime in that line, the time to the end of the run, and pyvmm's peak RSS.
Then the median of each. Figures, not assertions: nothing here fails.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

BANNER = re.compile(rb"pyvmm guest: Linux (\S+), up ([0-9.]+) s")


def one_run(cmd: list[str]) -> tuple[float, float, float, int]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first_line = uptime = None
    for line in proc.stdout:
        m = BANNER.search(line)
        if m and first_line is None:
            first_line = time.monotonic() - start
            uptime = float(m.group(2))
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.monotonic() - start
    if first_line is None or uptime is None:
        sys.exit(f"no banner from the guest (exit status {os.waitstatus_to_exitcode(status)})")
    return first_line, uptime, total, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guest", default="auto")
    parser.add_argument("--memory", default="512M")
    parser.add_argument("extra", nargs="*", help="more arguments for pyvmm run")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "pyvmm", "run", "--guest", args.guest, "--memory", args.memory,
           "--cmdline", "pyvmm.cmd=true", *args.extra]  # fmt: skip
    print(f"command: {' '.join(cmd[2:])}")
    rows = []
    for i in range(args.runs):
        first, uptime, total, rss = one_run(cmd)
        rows.append((first, uptime, total, rss))
        print(
            f"run {i + 1}: first userspace line {first:7.2f} s  guest uptime {uptime:7.2f} s  "
            f"total {total:7.2f} s  peak RSS {rss / 2**20:6.1f} MiB",
            flush=True,
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"median of {args.runs}: first userspace line {med[0]:.2f} s, guest uptime "
        f"{med[1]:.2f} s, total {med[2]:.2f} s, peak RSS {med[3] / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
