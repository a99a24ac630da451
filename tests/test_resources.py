"""What a Machine holds is given back: KVM descriptors, guest memory mappings
and threads, on every way out; and nothing grows over many guests (KVM)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvmm
from pyvmm import run
from pyvmm.arch.x86_64 import regs
from pyvmm.console.backends import ConsoleSpec
from pyvmm.devices import i8042
from pyvmm.memory import GuestMemory, Range
from pyvmm.vmm import builder
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.ending import Ending
from tests.guests.build import Guests
from tests.vmm_util import boot, run_to_end

pytestmark = pytest.mark.usefixtures("kvm")

MiB = 1 << 20


def kvm_descriptors() -> list[str]:
    """This process's descriptors for /dev/kvm, VMs and vCPUs."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
        if target == "/dev/kvm" or target.startswith("anon_inode:kvm"):
            found.append(target)
    return found


def kvm_mappings() -> list[str]:
    """Mappings of KVM objects (each vCPU's kvm_run)."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "anon_inode:kvm" in line]


def mapped(addresses: list[int]) -> list[int]:
    """Which of these host addresses start a mapping in this process."""
    with open("/proc/self/maps") as f:
        starts = {int(line.split("-", 1)[0], 16) for line in f}
    return [a for a in addresses if a in starts]


class Watch:
    """Records the host addresses of every guest RAM mapping a Machine makes,
    to check after it has gone that none is still mapped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.addresses: list[int] = []
        watch = self

        class RecordedMemory(GuestMemory):
            def __init__(self, ranges: list[Range], backing: int | None = None) -> None:
                super().__init__(ranges, backing)
                watch.addresses += [host for _, _, _, host in self.slots()]

        monkeypatch.setattr(builder, "GuestMemory", RecordedMemory)

    def assert_released(self) -> None:
        assert self.addresses, "no guest memory was mapped"
        assert mapped(self.addresses) == []
        assert kvm_descriptors() == []
        assert kvm_mappings() == []


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    assert kvm_descriptors() == []
    yield Watch(monkeypatch)


def config(guests: Guests, action: str = "reset") -> MachineConfig:
    return MachineConfig(kernel=guests.elf, cmdline=f"action={action}", memory=64 * MiB)


def test_released_after_a_normal_end(guests: Guests, watch: Watch) -> None:
    m = boot(config(guests))
    # What the checks look for is there while the machine exists.
    assert mapped(watch.addresses) == watch.addresses
    assert set(kvm_descriptors()) == {"/dev/kvm", "anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"}
    assert kvm_mappings()  # the vCPU's kvm_run
    try:
        m.start()
        result = m.wait()
    finally:
        m.close()
    assert result is not None and result.ending is Ending.RESET
    watch.assert_released()


def test_released_when_building_fails(
    guests: Guests, watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception after memory is mapped and the vCPU exists (setting up
    the boot registers, here) still releases everything."""

    def broken(*args: object) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(regs, "setup_boot_cpu", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        boot(config(guests))
    watch.assert_released()


def test_released_when_a_device_raises(
    guests: Guests, watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a device model (here the i8042, which the guest writes to
    reset) ends the guest with status 1, and releases everything."""

    def broken(self: object, offset: int, data: bytes) -> None:
        raise RuntimeError("device bug")

    monkeypatch.setattr(i8042.I8042, "write", broken)
    result = run_to_end(config(guests))
    assert result.ending is Ending.VMM_ERROR and "device bug" in result.message
    assert result.status == 1
    watch.assert_released()


def test_released_on_sigterm(guests: Guests, watch: Watch) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        result = run.run_machine(config(guests, "wait"), ConsoleSpec("none"))
    finally:
        timer.cancel()
    assert result.ending is Ending.TERMINATED
    watch.assert_released()


def test_released_on_keyboard_interrupt(guests: Guests, watch: Watch) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = run.run_machine(config(guests, "wait"), ConsoleSpec("none"))
    finally:
        timer.cancel()
    assert result.ending is Ending.INTERRUPTED
    watch.assert_released()


def counts() -> tuple[int, int, int]:
    """Open descriptors, threads, and resident set size in KiB."""
    fds = len(os.listdir("/proc/self/fd"))
    threads = len(os.listdir("/proc/self/task"))
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, threads, rss


def cycle(guests: Guests, i: int) -> None:
    """Start a guest and stop it: every other one ends by itself (a reset),
    the rest are stopped by the host while they wait."""
    action = "reset" if i % 2 else "wait"
    with pyvmm.Machine(kernel=guests.elf, cmdline=f"action={action}", memory="64M") as m:
        m.start()
        if action == "reset":
            assert m.wait(timeout=30) == 0
        else:
            m.wait_for(r"waiting\n", timeout=30)


def test_a_hundred_guests_leave_nothing_behind(guests: Guests) -> None:
    for i in range(10):  # warm up: imports, caches, the allocator's pools
        cycle(guests, i)
    fds, threads, rss = counts()
    for i in range(100):
        cycle(guests, i)
    fds_after, threads_after, rss_after = counts()
    print(f"fds {fds}->{fds_after} threads {threads}->{threads_after} RSS {rss}->{rss_after} KiB")
    assert fds_after == fds
    assert threads_after == threads
    # Each guest touches a few MiB of its RAM; a leak of one mapping or of
    # the console buffers per guest would add that much a hundred times.
    assert rss_after - rss < 8 * 1024


def test_four_guests_at_once(guests: Guests, tmp_path: Path) -> None:
    machines = [
        pyvmm.Machine(kernel=guests.elf, cmdline=f"action=xsave guest={i}", memory="64M")
        for i in range(4)
    ]
    try:
        for m in machines:
            m.start()
        statuses = [m.wait(timeout=120) for m in machines]
    finally:
        for m in machines:
            m.close()
    assert statuses == [0, 0, 0, 0]
    for i, m in enumerate(machines):
        assert f"guest={i}" in m.console
        assert all(f"guest={j}" not in m.console for j in range(4) if j != i)
        assert m.console.endswith("reset\n")
    assert kvm_descriptors() == []
