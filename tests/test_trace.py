"""--trace boot, --trace exits and --stats: what they print, checked against
what the test guest itself reports (KVM), and the exit log's rate limit."""

from __future__ import annotations

import re

import pytest

import pyvmm as pyvmm_api
from pyvmm.arch.x86_64 import pvm
from pyvmm.kvm import ffi, lib
from pyvmm.vmm import exit_log
from tests.cli_util import pyvmm
from tests.guests.build import Guests

BOOT_STEPS = [
    "read the kernel",
    "open /dev/kvm",
    "create the VM",
    "map 128 MiB of guest RAM",
    "place the devices",
    "write the ACPI tables",
    "load kernel, command line and initrd",
    "fill the zero page",
    "the E820 memory map",
    "identity-mapped page tables",
    "the boot GDT",
    "set up vCPU 0",
    "registers at entry, vCPU 0",
]


def io_exit(port: int, out: bool, data: bytes) -> tuple[object, memoryview]:
    """A kvm_run as KVM fills it for a port I/O exit, and its page."""
    run = ffi.new("struct kvm_run *")
    page = memoryview(bytearray(4096))
    run.io.direction = lib.KVM_EXIT_IO_OUT if out else lib.KVM_EXIT_IO_IN
    run.io.port, run.io.size, run.io.count, run.io.data_offset = port, len(data), 1, 0x100
    page[0x100 : 0x100 + len(data)] = data
    return run, page


def test_exit_log_is_rate_limited_and_counts_everything() -> None:
    lines: list[str] = []
    observer = exit_log.ExitLog(log=lines.append, count=True, burst=5, per_second=2)
    run, page = io_exit(0x3F8, True, b"A")
    for _ in range(100):
        observer.record(0, lib.KVM_EXIT_IO, run, page, ns=2000, note=None)
    # The burst, then two more in this second; the other 93 are only counted.
    assert len(lines) == 7
    assert lines[0] == "exit vCPU 0 IO port 0x03f8 out size 1 data 41 (2.0 µs)\n"
    table = observer.table()
    assert re.search(r"^ +100 100\.0% +0\.2 +2\.0  IO port 0x03f8 out size 1$", table, re.M)
    assert table.splitlines()[-1].split()[:2] == ["100", "100%"]


def test_mmio_exit_description() -> None:
    run = ffi.new("struct kvm_run *")
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xD0000000, 4, 1
    for i, b in enumerate(b"\x01\x02\x03\x04"):
        run.mmio.data[i] = b
    name, where, data = exit_log.describe_exit(lib.KVM_EXIT_MMIO, run, memoryview(b""))
    assert (name, where, data) == ("MMIO", "write 0xd0000000 size 4", b"\x01\x02\x03\x04")


def test_unknown_trace_kind_is_bad_input(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--trace", "boot,everything")
    assert r.returncode == 2 and r.stderr == (
        "pyvmm: unknown --trace 'everything': choose from boot, exits, migration, virtio\n"
    )


@pytest.mark.usefixtures("kvm")
def test_boot_trace_matches_what_the_guest_sees(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--memory", "128M", "--trace", "boot")
    assert r.returncode == 0, r.stderr
    titles = re.findall(r"^boot +\d+\. (.*)$", r.stderr, re.M)
    assert len(titles) == len(BOOT_STEPS)
    assert all(t.startswith(s) for t, s in zip(titles, BOOT_STEPS, strict=True)), titles
    # The E820 map the trace shows is the one the guest read from the zero page.
    guest_e820 = re.findall(r"^e820: (\S+ \w+)$", r.stdout, re.M)
    assert guest_e820 and all(f"          {e}\n" in r.stderr for e in guest_e820)
    # So are the entry point, the zero page and the command line address.
    assert "RIP 0x200200 (the 64-bit entry)  RSI 0x7000 (the zero page)" in r.stderr
    assert "entry: 0x00200200 zero page: 0x00007000" in r.stdout
    assert "  cmd_line_ptr = 0x20000\n" in r.stderr
    assert re.search(r"slot 0: guest 0x0000000000-0x0007ffffff \(128 MiB\) -> host 0x", r.stderr)
    assert "COM1: ports 0x03f8-0x03ff, IRQ 4 (Serial16550)" in r.stderr


@pytest.mark.usefixtures("kvm")
def test_exit_trace_and_stats_match_the_console(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--memory", "64M", "--trace", "exits", "--stats")
    assert r.returncode == 0, r.stderr
    out = len(r.stdout.encode())
    batched = re.search(r"^ +(\d+) writes KVM batched in the coalesced ring", r.stderr, re.M)
    if batched:
        # THR writes land in KVM's coalesced ring: no exit each, and the trace says so.
        assert not re.search(r"^exit vCPU 0 IO port 0x03f8 out", r.stderr, re.M)
        # Each LSR read before a byte is still an exit, from the first byte on.
        first = re.search(r"^exit vCPU 0 IO port 0x03fd in size 1 \(COM1\)", r.stderr, re.M)
        assert first
        count = int(batched.group(1))
    else:  # a host without KVM_CAP_COALESCED_PIO: one exit per byte
        first = re.search(
            r"^exit vCPU 0 IO port 0x03f8 out size 1 \(COM1\) data (\w\w)", r.stderr, re.M
        )
        assert first and bytes.fromhex(first.group(1)) == r.stdout.encode()[:1]
        row = re.search(r"^ +(\d+) .* IO port 0x03f8 out size 1 \(COM1\)$", r.stderr, re.M)
        assert row, r.stderr
        count = int(row.group(1))
    # Every console byte is one THR write; the UART self-test adds a few in loopback.
    assert out <= count <= out + 8
    reset = re.search(r"^ +1 .* IO port 0x0064 out size 1 \(i8042\)$", r.stderr, re.M)
    assert reset, "the reset through the i8042 is one exit"


@pytest.mark.usefixtures("kvm")
def test_stats_from_python(guests: Guests) -> None:
    with pyvmm_api.Machine(kernel=guests.elf, memory="64M", stats=True) as m:
        assert m.exit_stats() is not None  # counting from the start, even before it runs
        m.start()
        assert m.wait(timeout=30) == 0
        table = m.exit_stats()
    assert table is not None
    assert re.search(r"^ +1 .* IO port 0x0064 out size 1 \(i8042\)$", table, re.M)
    with pyvmm_api.Machine(kernel=guests.elf, memory="64M") as m:
        assert m.exit_stats() is None


@pytest.mark.usefixtures("kvm")
def test_stats_name_the_instructions_pyvmm_completes(guests: Guests) -> None:
    """On a PVM host KVM hands XSAVE and XRSTOR at CPL0 back to pyvmm; the
    table says which instruction each such exit was. Elsewhere there are none."""
    r = pyvmm(
        "run", "--kernel", guests.elf, "--memory", "64M", "--cmdline", "action=xsave", "--stats"
    )
    assert r.returncode == 0, r.stderr
    rows = re.findall(r"^ +(\d+) .* INTERNAL_ERROR (.*)$", r.stderr, re.M)
    if pvm.host_is_pvm():
        assert ("1", "emulation: xsave") in rows and ("1", "emulation: xrstor") in rows
    else:
        assert rows == []
