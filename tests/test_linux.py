"""Real Linux under KVM: the small kernel boots to busybox userspace.

Linux boots are slow where KVM emulates guest kernel mode (PVM: about a
minute and a half each), so the suite boots it twice, both at once, and the
tests share the results: the small kernel's vmlinux through the default-guest
path (``pyvmm run --guest small``), and its bzImage through ``--kernel``. The
first run builds the small kernel (minutes); later runs take it from the cache.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import pvm
from pyvmm.images import default
from tests.cpio_util import read_newc

pytestmark = pytest.mark.hwkvm

REPO = Path(__file__).resolve().parents[1]
MEMORY_MIB = 256
#: Generous: a boot takes about 90 s on a PVM host and a few seconds on hardware.
BOOT_TIMEOUT = 900
STATUS = 7  # the in-guest command's exit status, to see it carried through

#: What the guest runs in one-command mode (passed base64-encoded in pyvmm.cmd64).
# The pipeline matters: two glibc processes taking turns on the CPU is where
# vector-register state leaks between processes if the guest kernel does not
# switch it (glibc then crashes at start-up in the second one).
GUEST_SCRIPT = f"""
echo "release=$(uname -r)"
grep MemTotal /proc/meminfo
echo "cmdline=$(cat /proc/cmdline)"
md5sum /init /bin/busybox
echo "bin-entries=$(ls /bin | wc -l)"
exit {STATUS}
"""
BANNER = re.compile(r"^pyvmm guest: Linux (\S+), up ([0-9.]+) s$", re.MULTILINE)
COMMAND = re.compile(
    r"^--- pyvmm\.cmd begin ---\n(.*?)^--- pyvmm\.cmd end: status (\d+) ---$",
    re.MULTILINE | re.DOTALL,
)


@dataclass
class Boot:
    """One ``pyvmm run`` started in the background; :meth:`wait` collects it."""

    args: list[str]
    out: Path
    proc: subprocess.Popen[bytes]
    started: float
    status: int | None = None
    seconds: float = 0.0

    def wait(self) -> Boot:
        if self.status is None:
            try:
                self.status = self.proc.wait(
                    timeout=BOOT_TIMEOUT - (time.monotonic() - self.started)
                )
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"no end to the boot after {BOOT_TIMEOUT} s:\n{self.tail()}")
            self.seconds = time.monotonic() - self.started
        return self

    @property
    def console(self) -> str:
        return self.out.read_bytes().decode(errors="replace").replace("\r\n", "\n")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def command_output(self) -> tuple[str, int]:
        """The in-guest command's output and exit status, from between the markers."""
        m = COMMAND.search(self.console)
        assert m, f"no command markers in the console:\n{self.tail()}"
        return m.group(1), int(m.group(2))


def start(args: list[str], out: Path) -> Boot:
    cmd = [sys.executable, "-m", "pyvmm", "run", *args]
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    return Boot(args, out, proc, time.monotonic())


@pytest.fixture(scope="module")
def small(kvm: None) -> default.Kernel:
    """The small kernel, built on first use (the build prints its progress)."""
    return default.small_kernel()


@pytest.fixture(scope="module")
def initramfs(kvm: None) -> Path:
    return default.initramfs_image()


@pytest.fixture(scope="module")
def boots(
    small: default.Kernel, initramfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Boot]]:
    tmp = tmp_path_factory.mktemp("linux")
    script = base64.b64encode(GUEST_SCRIPT.encode()).decode()
    memory = f"{MEMORY_MIB}M"
    running = {
        "elf": start(
            ["--guest", "small", "--memory", memory,
             "--cmdline", f"pyvmm.test=elf-boot pyvmm.cmd64={script}"],
            tmp / "elf.log",
        ),
        "bzimage": start(
            ["--kernel", str(small.bzimage), "--initrd", str(initramfs), "--memory", memory,
             "--cmdline", "console=ttyS0 pyvmm.cmd=true"],
            tmp / "bzimage.log",
        ),
    }  # fmt: skip
    yield running
    for boot in running.values():
        if boot.proc.poll() is None:
            boot.proc.kill()
            boot.proc.wait()


def kernel_release(vmlinux: Path) -> str:
    """The release string baked into a kernel image (what ``uname -r`` says)."""
    m = re.search(rb"Linux version (\S+) \(", vmlinux.read_bytes())
    assert m, f"no version string in {vmlinux}"
    return m.group(1).decode()


def reported(output: str, key: str) -> str:
    m = re.search(rf"^{re.escape(key)}=(.*)$", output, re.MULTILINE)
    assert m, f"the guest did not report {key}:\n{output}"
    return m.group(1)


def reached_userspace(boot: Boot, small: default.Kernel, what: str) -> None:
    """The run ended with status 0 after /init's banner named the kernel built."""
    boot.wait()
    assert boot.status == 0, f"pyvmm exited with {boot.status}:\n{boot.tail()}"
    banner = BANNER.search(boot.console)
    assert banner, f"no banner from /init:\n{boot.tail()}"
    assert banner.group(1) == kernel_release(small.vmlinux)
    print(f"\n{what}: banner at guest uptime {banner.group(2)} s, run took {boot.seconds:.1f} s")


def test_elf_boot_reaches_userspace(boots: dict[str, Boot], small: default.Kernel) -> None:
    boot = boots["elf"]
    reached_userspace(boot, small, "vmlinux boot")
    faults = [line for line in boot.console.splitlines() if "segfault at" in line]
    assert not faults, "user-mode faults in the guest:\n" + "\n".join(faults)


def test_command_output_and_status(boots: dict[str, Boot], small: default.Kernel) -> None:
    output, status = boots["elf"].wait().command_output()
    assert status == STATUS
    assert reported(output, "release") == kernel_release(small.vmlinux)


def test_memtotal_matches_memory(boots: dict[str, Boot]) -> None:
    output, _ = boots["elf"].wait().command_output()
    m = re.search(r"^MemTotal:\s+(\d+) kB$", output, re.MULTILINE)
    assert m, output
    total_kib = int(m.group(1))
    # MemTotal is RAM less what the kernel keeps for itself (its image, page
    # structures, reserved ranges): a little under --memory, never over it.
    assert 0.85 * MEMORY_MIB * 1024 < total_kib <= MEMORY_MIB * 1024


def test_cmdline_reaches_the_guest(boots: dict[str, Boot]) -> None:
    output, _ = boots["elf"].wait().command_output()
    words = reported(output, "cmdline").split()
    assert set(default.DEFAULT_CMDLINE.split()) <= set(words)
    assert "pyvmm.test=elf-boot" in words
    if pvm.host_is_pvm():
        assert set(pvm.GUEST_CMDLINE) <= set(words)
    else:  # hardware KVM: none of the PVM workarounds
        assert not set(pvm.GUEST_CMDLINE) & set(words)


def test_initrd_contents(boots: dict[str, Boot], initramfs: Path) -> None:
    output, _ = boots["elf"].wait().command_output()
    archive = {name: body for name, _, body, _ in read_newc(initramfs.read_bytes())}
    for guest_path in ("/init", "/bin/busybox"):
        want = hashlib.md5(archive[guest_path.lstrip("/")]).hexdigest()
        assert re.search(rf"^{want}\s+{guest_path}$", output, re.MULTILINE), (
            f"{guest_path} differs from the initramfs's:\n{output}"
        )
    assert archive["init"] == (REPO / "images" / "init").read_bytes()
    in_bin = [name for name in archive if name.startswith("bin/")]
    assert int(reported(output, "bin-entries")) == len(in_bin)


def test_bzimage_boot(boots: dict[str, Boot], small: default.Kernel) -> None:
    boot = boots["bzimage"]
    reached_userspace(boot, small, "bzImage boot")
    assert boot.command_output() == ("", 0)
