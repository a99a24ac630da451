"""The snapshot state file and each device's saved state, without KVM:
round trips, and damaged files refused whole (Hypothesis)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.arch.x86_64.state import VcpuState, VmState
from pyvmm.devices import acpi_pm, cmos, i8042, pvpanic
from pyvmm.kvm import CpuidEntry
from pyvmm.memory import GuestMemory, Range
from pyvmm.snapshot import format, store
from pyvmm.snapshot.format import HostInfo, SavedConfig, Snapshot, SnapshotError

MiB = 1 << 20


def sample(cpus: int = 2) -> Snapshot:
    return Snapshot(
        config=SavedConfig("/k/vmlinux", "/k/initrd", "console=ttyS0", 64 * MiB, cpus),
        host=HostInfo("GenuineIntel", False, 4096, {"1.ecx": 0x80202001, "7.ebx": 0x1}),
        vm=VmState(
            irqchips={
                "pic_master": b"\x01" * 520,
                "pic_slave": b"\x02" * 520,
                "ioapic": b"\x03" * 520,
            },
            pit=b"\x04" * 112,
            clock=123456789,
            clock_flags=6,
            realtime=1796116096 * 10**9,
        ),
        vcpus=[
            VcpuState(
                id=i,
                cpuid=[CpuidEntry(0, 0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)],
                structs={
                    "mp_state": b"\0" * 4,
                    "regs": bytes(range(144)),
                    "sregs": b"\x05" * 312,
                    "xcrs": b"\x06" * 392,
                    "debugregs": b"\x07" * 128,
                    "lapic": b"\x08" * 1024,
                },
                xsave=b"\x09" * 4096,
                msrs={0x10: 12345, 0xC0000082: 0xFFFFFFFF81000000},
                events=b"\x0a" * 64,
                tsc_khz=2_000_000,
            )
            for i in range(cpus)
        ],
        devices={"COM1": {"ier": 1, "rx": "6162"}, "i8042": {"ctr": 5}},
        emulation={"pf_handler": [1, 2]},
        created=time.time(),
        extra={"shell_ready": True},
    )


def test_round_trip() -> None:
    snap = sample()
    assert format.decode(format.encode(snap)) == snap


def test_newer_and_foreign_files_are_refused() -> None:
    doc = json.loads(format.encode(sample()))
    with pytest.raises(SnapshotError, match="newer than this pyvmm reads"):
        format.decode(json.dumps({**doc, "version": format.VERSION + 1}).encode())
    with pytest.raises(SnapshotError, match="not a pyvmm snapshot"):
        format.decode(json.dumps({**doc, "format": "qemu"}).encode())
    with pytest.raises(SnapshotError, match="vCPUs do not match"):
        format.decode(json.dumps({**doc, "config": {**doc["config"], "cpus": 3}}).encode())


def save_sample(path: Path, snap: Snapshot | None = None) -> Snapshot:
    snap = snap or sample()
    with GuestMemory([Range(0, 64 * MiB)]) as memory:
        memory.write(0x1000, b"guest data")
        store.save(path, snap, memory)
    return snap


def test_store_round_trip_and_sparse_memory(tmp_path: Path) -> None:
    snap = save_sample(tmp_path / "snap")
    assert store.load(tmp_path / "snap") == snap
    memory = tmp_path / "snap" / store.MEMORY
    assert memory.stat().st_size == 64 * MiB
    assert memory.stat().st_blocks * 512 <= 1 * MiB  # untouched pages are holes
    with open(memory, "rb") as f:
        f.seek(0x1000)
        assert f.read(10) == b"guest data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.mark.parametrize("kernel_copies", [True, False])
def test_a_clone_memory_file_is_copied_with_its_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copies: bool
) -> None:
    """A restored guest's snapshot starts from the memory file it maps,
    which may lie on another file system (copy_file_range: EXDEV)."""
    if not kernel_copies:

        def exdev(*_: object) -> int:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", exdev)
    base, size = tmp_path / "base", 40 * MiB
    with open(base, "wb") as f:
        f.truncate(size)
        for where in (0x3000, 20 * MiB + 7, size - 16):
            f.seek(where)
            f.write(b"data%d" % where)
    copy = tmp_path / "copy"
    src, dst = os.open(base, os.O_RDONLY), os.open(copy, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(dst, size)
        store._copy_data(src, dst, size)
    finally:
        os.close(src)
        os.close(dst)
    assert copy.read_bytes() == base.read_bytes()
    assert copy.stat().st_blocks * 512 <= 1 * MiB  # the holes stayed holes


def test_store_refuses_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    with pytest.raises(SnapshotError, match="already exists"):
        save_sample(tmp_path / "snap")


def test_store_leaves_nothing_when_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot write"):
        save_sample(tmp_path / "no" / "such" / "snap")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda d: (d / store.STATE).write_bytes(b"{}"), "checksum"),
        (lambda d: (d / store.CHECKSUM).unlink(), "state.sha256 is missing"),
        (lambda d: (d / store.MEMORY).unlink(), "memory is missing"),
        (lambda d: os.truncate(d / store.MEMORY, MiB), "memory file is truncated"),
    ],
)
def test_damaged_snapshots_are_refused(tmp_path: Path, damage: Any, words: str) -> None:
    save_sample(tmp_path / "snap")
    damage(tmp_path / "snap")
    with pytest.raises(SnapshotError, match=words):
        store.load(tmp_path / "snap")


ENCODED = format.encode(sample())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(ENCODED) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.integers(0, len(ENCODED)),
)
def test_random_damage_is_refused_never_half_loaded(flips: list[tuple[int, int]], cut: int) -> None:
    """Bytes changed anywhere, or the file cut short: with the checksum
    recomputed (so the parser itself is tested), decoding either gives a
    well-formed Snapshot or raises SnapshotError; nothing else escapes."""
    data = bytearray(ENCODED)
    for at, value in flips:
        data[at] = value
    data = data[: max(cut, 1)] if cut < len(data) // 2 else data
    try:
        snap = format.decode(bytes(data))
    except SnapshotError:
        return
    assert isinstance(snap, Snapshot)
    assert all(isinstance(v.structs["regs"], bytes) for v in snap.vcpus)
    assert len(snap.vcpus) == snap.config.cpus


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(ENCODED) - 1), st.integers(1, 255))
def test_a_changed_byte_fails_the_checksum(
    tmp_path_factory: pytest.TempPathFactory, at: int, delta: int
) -> None:
    path = tmp_path_factory.mktemp("snap") / "s"
    save_sample(path)
    state = bytearray((path / store.STATE).read_bytes())
    at %= len(state)
    state[at] = (state[at] + delta) % 256
    (path / store.STATE).write_bytes(bytes(state))
    with pytest.raises(SnapshotError, match="checksum"):
        store.load(path)


def test_checksum_is_sha256_of_the_state(tmp_path: Path) -> None:
    save_sample(tmp_path / "snap")
    state = (tmp_path / "snap" / store.STATE).read_bytes()
    assert (tmp_path / "snap" / store.CHECKSUM).read_text() == hashlib.sha256(state).hexdigest()


# -- device state round trips ---------------------------------------------------


def test_cmos_state_round_trip() -> None:
    a = cmos.CmosRtc()
    a.write(0, b"\x40")
    a.write(1, b"\x99")  # a byte of CMOS RAM
    a.write(0, b"\x0b")
    b = cmos.CmosRtc()
    b.restore(a.state())
    assert b.state() == a.state()
    b.write(0, b"\x40")
    assert b.read(1, 1) == b"\x99"
    with pytest.raises(ValueError):
        b.restore({**a.state(), "ram": "00"})


def test_acpi_pm_state_round_trip() -> None:
    a = acpi_pm.AcpiPm(on_poweroff=lambda: None)
    a.write(2, b"\x21\x00")  # PM1_EN
    b = acpi_pm.AcpiPm(on_poweroff=lambda: None)
    b.restore(a.state())
    assert b.read(0, acpi_pm.PORT_COUNT) == a.read(0, acpi_pm.PORT_COUNT)
    with pytest.raises(ValueError):
        b.restore({"regs": "zz"})


def test_pvpanic_has_no_state_to_lose() -> None:
    a = pvpanic.PvPanic(on_panic=lambda: None)
    b = pvpanic.PvPanic(on_panic=lambda: None)
    b.restore(a.state())
    assert a.state() == {} and b.read(0, 1) == a.read(0, 1)


def test_i8042_refuses_state_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError):
        i8042.I8042(on_reset=lambda: None).restore({"ctr": "x"})


class FakeClockVm:
    """The two clock ioctls, recorded."""

    def __init__(self, flags: int, realtime: int) -> None:
        self.flags, self.realtime = flags, realtime
        self.set: list[int] = []

    def get_clock(self) -> tuple[int, int, int]:
        return 5 * 10**9, self.flags, self.realtime

    def set_clock(self, clock: int, realtime: int = 0) -> None:
        assert realtime == 0  # the sum is pyvmm's: old kernels refuse KVM_CLOCK_REALTIME
        self.set.append(clock)


def test_a_restored_clock_moves_on_by_the_time_on_disk() -> None:
    from pyvmm.arch.x86_64 import state
    from pyvmm.kvm import lib

    vm = FakeClockVm(lib.KVM_CLOCK_REALTIME, 1000 * 10**9)
    saved = state.VmState(irqchips={}, pit=b"", clock=5 * 10**9, clock_flags=0,
                          realtime=1000 * 10**9)  # fmt: skip
    assert state.restore_clock(vm, saved, 1007 * 10**9) == 0  # type: ignore[arg-type]
    assert vm.set == [12 * 10**9]
    late = 1000 * 10**9 + state.CLOCK_JUMP_MAX_NS + 1
    assert state.restore_clock(vm, saved, late) == state.CLOCK_JUMP_MAX_NS + 1  # type: ignore[arg-type]
    assert vm.set[-1] == 5 * 10**9  # too far to jump: the guest catches up itself


def test_the_tsc_moves_on_with_the_clock_at_the_vcpus_rate() -> None:
    """A guest keeping time with the TSC sees the time on disk too: 7 s at
    2.3 GHz; nothing else changes, and nothing moves where the VM's clock
    could not be moved either."""
    from pyvmm.arch.x86_64 import msr, state

    saved_vm = state.VmState(irqchips={}, pit=b"", clock=5 * 10**9, clock_flags=0,
                             realtime=1000 * 10**9)  # fmt: skip
    vcpu = VcpuState(id=0, cpuid=[], structs={}, xsave=b"", events=b"", tsc_khz=2_300_000,
                     msrs={msr.MSR_IA32_TSC: 10**12, msr.MSR_LSTAR: 0xFFFF})  # fmt: skip
    away = state.time_away(saved_vm, 1007 * 10**9)
    assert away == 7 * 10**9
    assert state.tsc_moved_on(vcpu, away) == {
        msr.MSR_IA32_TSC: 10**12 + 7 * 2_300_000_000,
        msr.MSR_LSTAR: 0xFFFF,
    }
    assert vcpu.msrs[msr.MSR_IA32_TSC] == 10**12  # the saved state is left as it was
    late = 1000 * 10**9 + state.CLOCK_JUMP_MAX_NS + 1
    assert state.time_away(saved_vm, late) == 0
    assert state.time_away(saved_vm, 999 * 10**9) == 0  # saved "in the future"
    assert state.tsc_moved_on(vcpu, 0) == vcpu.msrs
    unknown_rate = VcpuState(id=0, cpuid=[], structs={}, xsave=b"", events=b"", msrs=vcpu.msrs)
    assert state.tsc_moved_on(unknown_rate, away) == vcpu.msrs


def test_a_host_without_kvm_realtime_still_records_the_time() -> None:
    """KVM pairs its clock with CLOCK_REALTIME only on a TSC clocksource
    (not under the nested rig): pyvmm then reads the time itself."""
    from pyvmm.arch.x86_64 import state

    vm = FakeClockVm(0, 0)
    vm.get_irqchip = lambda chip: b""  # type: ignore[attr-defined]
    vm.get_pit2 = lambda: b""  # type: ignore[attr-defined]
    before = time.time_ns()
    saved = state.save_vm(vm)  # type: ignore[arg-type]
    assert before <= saved.realtime <= time.time_ns()


class FakeStateVcpu:
    """The setters restore_vcpu calls, recorded in order."""

    def __init__(self) -> None:
        self.set: list[str] = []

    def set_state(self, what: str, data: bytes) -> None:
        self.set.append(what)

    def set_xsave_state(self, data: bytes) -> None:
        self.set.append("xsave")

    def set_msrs(self, values: dict[int, int]) -> int:
        return len(values)


@pytest.mark.parametrize("nr_xcrs", [0, 1])
def test_xcrs_are_restored_only_where_some_were_saved(nr_xcrs: int) -> None:
    """A host without XSAVE saves no XCRs (nr_xcrs 0) and its KVM refuses
    KVM_SET_XCRS: the restore leaves them out there, and only there."""
    from pyvmm.arch.x86_64 import state

    xcrs = nr_xcrs.to_bytes(4, "little") + bytes(388)
    structs = {name: b"" for name in state.VCPU_STRUCTS} | {"xcrs": xcrs}
    saved = VcpuState(id=0, cpuid=[], structs=structs, xsave=b"", msrs={}, events=b"")
    vcpu = FakeStateVcpu()
    assert state.restore_vcpu(vcpu, saved) == []  # type: ignore[arg-type]
    assert ("xcrs" in vcpu.set) == bool(nr_xcrs)
    assert vcpu.set[-1] == "events" and "lapic" in vcpu.set
