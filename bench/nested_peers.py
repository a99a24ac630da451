"""pyvmm next to kvmtool and QEMU on hardware-style KVM, in one L1 session.

    python bench/nested_peers.py [--runs 3] [--kvmtool-tarball PATH]

Builds kvmtool's ``lkvm`` from its source tarball on this machine (it is a
peer to measure against, not part of pyvmm: nothing of it is kept), then
runs the rest of this script inside scripts/nested-kvm.sh (kvm_amd under
QEMU's TCG), where each VMM boots the same small kernel and busybox
initramfs with ``quiet pyvmm.cmd=true`` (256 MiB, 1 vCPU) and the time from
exec to the VMM's exit is taken, median of --runs:

- pyvmm with the bzImage (what the peers boot) and with the vmlinux ELF
  (pyvmm's default: no decompression);
- kvmtool: ``lkvm run -k BZIMAGE -i INITRD -m 256 -c 1 -p CMDLINE
  --console serial --network mode=none``;
- QEMU ``-M microvm,rtc=on`` (its fastest form; without rtc=on the guest's
  rtc_cmos probe waits 10 s) and ``-M pc``.

Everything in L1 runs under emulation, so the absolute times are inflated:
compare within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARBALL = Path("/work/shared/peers/kvmtool-b48735e.tar.gz")
CMDLINE = "console=ttyS0 quiet pyvmm.cmd=true"


def build_kvmtool(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    src = next(p for p in into.iterdir() if p.is_dir())
    subprocess.run(["make", "-j2", "lkvm"], cwd=src, check=True, capture_output=True)
    return src / "lkvm"


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    took = time.monotonic() - start
    if b"pyvmm.cmd end: status 0" not in proc.stdout:
        tail = proc.stdout[-1500:].decode(errors="replace") + proc.stderr[-500:].decode(
            errors="replace"
        )
        raise SystemExit(f"{cmd[0]}: the guest's command did not run to its end:\n{tail}")
    return took


def inside(runs: int, lkvm: Path) -> None:
    """In L1: every VMM, the same kernel and initramfs."""
    sys.path.insert(0, str(ROOT))
    from pyvmm.images import default

    small, initrd = default.small_kernel(), default.initramfs_image()
    env_python = [sys.executable, "-m", "pyvmm", "run", "--memory", "256M", "--initrd", str(initrd)]
    qemu = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-kernel",
            str(small.bzimage), "-initrd", str(initrd), "-append", CMDLINE, "-nographic",
            "-nodefaults", "-serial", "stdio", "-no-reboot"]  # fmt: skip
    vmms = {
        "pyvmm, vmlinux ELF": [*env_python, "--kernel", str(small.vmlinux), "--cmdline", CMDLINE],
        "pyvmm, bzImage": [*env_python, "--kernel", str(small.bzimage), "--cmdline", CMDLINE],
        "kvmtool": [str(lkvm), "run", "-k", str(small.bzimage), "-i", str(initrd), "-m", "256",
                    "-c", "1", "-p", CMDLINE, "--console", "serial", "--network", "mode=none"],
        "QEMU -M microvm,rtc=on": [*qemu, "-M", "microvm,rtc=on"],
        "QEMU -M pc": [*qemu, "-M", "pc"],
    }  # fmt: skip
    for cmd in vmms.values():
        timed(cmd)  # warm: page cache, Python's bytecode
    times: dict[str, list[float]] = {name: [] for name in vmms}
    for _ in range(runs):
        for name, cmd in vmms.items():
            times[name].append(timed(cmd))
    print(f"nested: boot to exit of the small kernel, quiet pyvmm.cmd=true, median of {runs}:")
    for name, values in times.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<24} {statistics.median(values):6.2f} s   ({each})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kvmtool-tarball", type=Path, default=TARBALL)
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # lkvm, in L1
    args = parser.parse_args()
    if args.inside is not None:
        inside(args.runs, args.inside)
        return
    if not args.kvmtool_tarball.is_file():
        sys.exit(f"no kvmtool source at {args.kvmtool_tarball} (--kvmtool-tarball)")
    work = Path(tempfile.mkdtemp(prefix="pyvmm-peers-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        lkvm = build_kvmtool(args.kvmtool_tarball, work)
        status = subprocess.call(
            [str(ROOT / "scripts" / "nested-kvm.sh"), "--timeout", "3000", sys.executable,
             str(Path(__file__).resolve()), "--runs", str(args.runs), "--inside", str(lkvm)]
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
