"""Virtio under Linux (KVM): the default guest booted with
``pyvmm run --disk ... --disk ...,readonly --rng`` finds vda, vdb and
/dev/hwrng; it mounts an ext4 file system the host made, reads the host's
file and writes its own, trims it (DISCARD), and the host then reads the
guest's file with debugfs and checks the file system with e2fsck; the
read-only disk refuses a write and reads back whole; the entropy device
gives bytes; and a write the guest synced is in the image file after pyvmm
is killed with SIGKILL."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

BOOT_TIMEOUT = 900
SCRIPT = """
cat /sys/block/vda/size /sys/block/vdb/ro /sys/block/vda/serial; echo
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt
echo from-the-guest > /mnt/guest.txt
dd if=/dev/zero of=/mnt/zeros bs=64k count=32 2>/dev/null
rm /mnt/zeros && sync && fstrim /mnt && echo trimmed
umount /mnt && echo unmounted
echo "vdb $(md5sum < /dev/vdb)"
dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; echo "ro write status $?"
echo "hwrng $(head -c 4096 /dev/hwrng | wc -c) $(cat /sys/class/misc/hw_random/rng_current)"
head -c 65536 /dev/urandom > /tmp/pattern && dd if=/tmp/pattern of=/dev/vdc bs=64k 2>/dev/null
sync && echo "synced $(md5sum < /tmp/pattern)"
sleep 600
"""


def test_disks_and_entropy(tmp_path: Path) -> None:
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("needs e2fsprogs (mkfs.ext4, debugfs) on the host")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from the host\n")
    data = tmp_path / "data.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(src), str(data), "16M"], check=True, capture_output=True
    )
    ro = tmp_path / "ro.img"
    ro.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    raw = tmp_path / "raw.img"
    raw.write_bytes(bytes(1 << 20))
    cmd = base64.b64encode(SCRIPT.encode()).decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--memory", "256M",
         "--disk", f"{data},serial=pyvmm-data", "--disk", f"{ro},readonly", "--disk", str(raw),
         "--rng", "--cmdline", f"pyvmm.cmd64={cmd}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    timer = threading.Timer(BOOT_TIMEOUT, proc.kill)
    timer.start()
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # until the guest says its write is synced: then kill -9
        lines.append(line)
        if line.startswith("synced "):
            proc.kill()
            break
    timer.cancel()
    proc.wait()
    out = "".join(lines)
    synced = re.search(r"^synced (\w+)", out, re.M)
    assert synced, (proc.stderr.read() if proc.stderr else "") + out[-3000:]
    # What a guest wrote and synced is the host's once the write returned: no cache in pyvmm.
    assert hashlib.md5(raw.read_bytes()[:65536]).hexdigest() == synced.group(1)
    assert re.search(r"^32768\n1\npyvmm-data\n", out, re.M), out[-3000:]  # 16 MiB in sectors
    assert "from the host\n" in out and "trimmed\n" in out and "unmounted\n" in out
    assert f"vdb {hashlib.md5(ro.read_bytes()).hexdigest()}" in out
    assert re.search(r"^ro write status [1-9]", out, re.M), out[-3000:]
    assert re.search(r"^hwrng 4096 virtio_rng\.\d+$", out, re.M), out[-3000:]
    assert ro.read_bytes() == bytes(range(256)) * 4096
    got = subprocess.run(
        ["debugfs", "-R", "cat /guest.txt", str(data)], capture_output=True, text=True, check=True
    )
    assert got.stdout == "from-the-guest\n"
    fsck = subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
