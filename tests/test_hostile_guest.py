"""Hostile guests under KVM: a test guest that writes junk to every port
nobody claims, reads every port back, writes and reads MMIO that is neither
RAM nor a device, then triple-faults; and one that spins with interrupts off
so that only the host can end it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.ending import Ending, Outcome
from tests.cli_util import pyvmm
from tests.guests.build import Guests
from tests.vmm_util import boot

pytestmark = pytest.mark.usefixtures("kvm")


def test_hammering_ports_and_mmio_then_triple_fault(guests: Guests) -> None:
    r = pyvmm(
        "run", "--kernel", guests.elf, "--memory", "64M", "--cmdline", "action=hostile",
        timeout=300,
    )  # fmt: skip
    m = re.search(
        r"hostile: (\d+) port accesses, (\d+) unclaimed ports not all-ones; "
        r"(\d+) MMIO accesses, (\d+) not all-ones\n",
        r.stdout,
    )
    assert m, r.stdout
    port_accesses, ports_bad, mmio_accesses, mmio_bad = map(int, m.groups())
    # Every port at sizes 1, 2 and 4: a write and a read where unclaimed, a read where claimed.
    assert port_accesses > 3 * 0x10000 * 2 - 200
    assert ports_bad == 0
    assert mmio_accesses > 16000 and mmio_bad == 0
    assert r.stdout.endswith("triple fault\n")
    assert r.returncode == Ending.TRIPLE_FAULT.status
    assert r.stderr == "pyvmm: vCPU 0: guest triple fault\n"


def test_spinning_guest_ends_on_sigterm(guests: Guests) -> None:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(guests.elf),
           "--memory", "64M", "--cmdline", "action=spin"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line == "spinning\n":
                break
        time.sleep(1.5)  # a few idle checks: spinning is not halted
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_spinning_guest_stopped_from_python(guests: Guests) -> None:
    out = bytearray()
    with boot(MachineConfig(kernel=guests.elf, cmdline="action=spin", memory=64 << 20), out) as m:
        m.start()
        assert m.wait(timeout=3) is None  # still running
        assert out.endswith(b"spinning\n")
        m.stop(Outcome(Ending.TERMINATED, "stopped by the test"))
        result = m.wait(timeout=10)
    assert result is not None and result.ending is Ending.TERMINATED


def test_a_hostile_virtio_driver(guests: Guests, tmp_path: Path) -> None:
    """A test guest that breaks every rule of virtio it can on a read-only
    disk (tests/guests/virtio.c): each time the device says so as the spec
    wants, pyvmm carries on, and the disk is untouched and still reads."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"SECTOR0!" + bytes((1 << 20) - 8))
    r = pyvmm(
        "run", "--kernel", guests.elf, "--memory", "64M", "--disk", f"{disk},readonly",
        "--cmdline", "action=virtio", timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "virtio WRONG" not in r.stdout, r.stdout
    assert "virtio: sector 0 begins SECTOR0!\n" in r.stdout
    assert "virtio: 15 of 15 cases answered as the spec says\n" in r.stdout
    assert disk.read_bytes() == b"SECTOR0!" + bytes((1 << 20) - 8)
