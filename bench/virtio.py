"""bench/run.py's virtio figures (``--only virtio``; needs root for the
network namespace).

One boot of the default guest with a 256 MiB disk image and a tap card in
a network namespace made for it. In the guest, busybox dd with O_DIRECT
reads the whole disk in 1 MiB blocks, writes it, and reads 32 MiB in 4 KiB
blocks (each block a request: the cost of one request); then it sends
4 MiB over TCP to a receiver on the namespace's side of the tap. The host
does the same dd on the same file for comparison. From ``--stats``: the
exits at the virtio devices' registers per MiB moved, and pyvmm's CPU time
per MiB (its whole process: the I/O thread's Python data path, the vCPU,
everything), both over the whole run, boot included.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

MiB = 1 << 20
DISK_MIB = 256
NET_MIB = 4
HOST, GUEST = "192.168.78.1", "192.168.78.2"

# busybox dd says no time: each step is timed by the guest's uptime.
SCRIPT = f"""
timed() {{ a=$(cut -d' ' -f1 /proc/uptime); "$@" 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); }}
echo data-path-begins
timed dd if=/dev/vda of=/dev/null bs=1M iflag=direct; echo "read $a $b"
timed dd if=/dev/zero of=/dev/vda bs=1M count={DISK_MIB} oflag=direct; echo "write $a $b"
timed dd if=/dev/vda of=/dev/null bs=4k count=8192 iflag=direct; echo "small $a $b"
ip addr add {GUEST}/24 dev eth0
dd if=/dev/zero bs=64k count={NET_MIB * 16} 2>/dev/null | nc {HOST} 5001
echo data-path-ends
"""

RECEIVER = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{HOST}", 5001))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
got, first = 0, None
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    first = first or time.monotonic()
    got += len(chunk)
print("received", got, time.monotonic() - first, flush=True)
"""


def _seconds(dd_line: str) -> float:
    """The seconds in GNU dd's summary line."""
    m = re.search(r"copied, ([0-9.]+) s", dd_line)
    if not m:
        raise RuntimeError(f"no time in dd's line {dd_line!r}")
    return float(m.group(1))


def _guest_seconds(line: str) -> float:
    """A ``WHAT START END`` line of guest uptimes."""
    _, start, end = line.split()
    return float(end) - float(start)


def _host_dd(*args: str) -> float:
    r = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    return _seconds(r.stderr.strip().splitlines()[-1])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def disk_and_net() -> None:
    if os.geteuid() != 0:
        print("virtio: needs root (a network namespace for the tap)")
        return
    folder = Path(tempfile.mkdtemp(prefix="pyvmm-bench-", dir="/var/tmp"))
    image = folder / "disk.img"
    with open(image, "wb") as f:
        for _ in range(DISK_MIB):
            f.write(os.urandom(MiB))
    host_read = _host_dd(f"if={image}", "of=/dev/null", "bs=1M", "iflag=direct")
    host_write = _host_dd("if=/dev/zero", f"of={image}", "bs=1M", f"count={DISK_MIB}",
                          "oflag=direct", "conv=notrunc")  # fmt: skip
    host_small = _host_dd(f"if={image}", "of=/dev/null", "bs=4k", "count=8192", "iflag=direct")

    ns = f"pyvmm-bench-{uuid.uuid4().hex[:6]}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "tuntap", "add", "tap0", "mode", "tap")
        _ip("-n", ns, "addr", "add", f"{HOST}/24", "dev", "tap0")
        _ip("-n", ns, "link", "set", "tap0", "up")
        receiver = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER],
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert receiver.stdout is not None and receiver.stdout.readline() == "ready\n"
        cmd = base64.b64encode(SCRIPT.encode()).decode()
        started = time.monotonic()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "pyvmm", "run", "--memory", "512M",
             "--disk", str(image), "--net", "tap:tap0", "--stats",
             "--cmdline", f"pyvmm.cmd64={cmd}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        out, cpu_at = [], {}
        for line in proc.stdout:  # pyvmm's CPU time (ticks) where the data path begins and ends
            out.append(line)
            if line.startswith("data-path-"):
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu_at[line.strip()] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                    "SC_CLK_TCK"
                )
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
        wall = time.monotonic() - started
        received, _ = receiver.communicate(timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    stdout = "".join(out)
    if proc.returncode != 0:
        print(f"virtio: the guest failed ({proc.returncode}): {err[-500:]}")
        return
    lines = {w: line for line in stdout.splitlines() if (w := line.split(" ", 1)[0]) in
             ("read", "write", "small")}  # fmt: skip
    guest_read, guest_write = _guest_seconds(lines["read"]), _guest_seconds(lines["write"])
    guest_small = _guest_seconds(lines["small"])
    m = re.search(r"received (\d+) ([0-9.]+)", received)
    net_rate = int(m.group(1)) / float(m.group(2)) / MiB if m else 0.0
    virtio_exits = sum(int(line.split()[0]) for line in err.splitlines() if "(virtio-" in line)
    moved = 2 * DISK_MIB + 32 + NET_MIB
    cpu = cpu_at["data-path-ends"] - cpu_at["data-path-begins"]
    print(f"virtio-blk: {DISK_MIB} MiB O_DIRECT read in 1 MiB blocks: guest "
          f"{DISK_MIB / guest_read:.0f} MiB/s, host {DISK_MIB / host_read:.0f} MiB/s "
          f"(ratio {host_read / guest_read:.2f})")  # fmt: skip
    print(
        f"virtio-blk: {DISK_MIB} MiB O_DIRECT write: guest {DISK_MIB / guest_write:.0f} "
        f"MiB/s, host {DISK_MIB / host_write:.0f} MiB/s (ratio {host_write / guest_write:.2f})"
    )
    print(
        f"virtio-blk: 4 KiB O_DIRECT reads: guest {8192 / guest_small:.0f}/s, "
        f"host {8192 / host_small:.0f}/s"
    )
    print(f"virtio-net: {NET_MIB} MiB guest to host over TCP on a tap: {net_rate * 1024:.0f} KiB/s")
    print(
        f"virtio: {virtio_exits} exits at the devices' registers for {moved} MiB moved "
        f"({virtio_exits / moved:.0f}/MiB, boot included); pyvmm's CPU while data moved "
        f"{cpu:.1f} s ({cpu * 1000 / moved:.1f} ms/MiB); the whole run {wall:.0f} s"
    )
    for line in err.splitlines():
        if line.startswith("  virtio-"):
            print(f"  {line.strip()}")
