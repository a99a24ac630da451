"""Boot the test guests under KVM through the ``pyvmm`` command and check
every line they print: where the loader put things, what the zero page
says, and that the guest ran in long mode and reached the devices."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import pvm
from tests.cli_util import pyvmm
from tests.conftest import xsetbv_defect
from tests.guests.build import PREF_ADDRESS, Guests

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

LOW_E820 = [
    "e820: 0x0000000000000000-0x000000000009fbff ram",
    "e820: 0x000000000009fc00-0x000000000009ffff reserved",
    "e820: 0x00000000000e0000-0x00000000000fffff reserved",
]


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("initrd") / "initrd.img"
    path.write_bytes(os.urandom(5000))
    return path


def seen_cmdline(cmdline: str) -> str:
    """What the guest finds: on a PVM host pyvmm appends its guest options."""
    return pvm.guest_cmdline(cmdline) if pvm.host_is_pvm() else cmdline


def expected_lines(
    entry: int, protocol: int, cmdline: str, e820_tail: list[str], initrd_line: str, last: str
) -> list[str]:
    return [
        "pyvmm test guest",
        f"entry: {entry:#010x} zero page: 0x00007000",
        "long mode: yes",
        f"loader: type 0xff protocol {protocol:#06x}",
        f"cmdline: {seen_cmdline(cmdline)}",
        *LOW_E820,
        *e820_tail,
        initrd_line,
        "uart: ok",
        last,
    ]


def initrd_line(path: Path, addr: int) -> str:
    data = path.read_bytes()
    return f"initrd: addr {addr:#010x} size {len(data)} crc32 {zlib.crc32(data):#010x}"


def test_elf_guest(guests: Guests, initrd: Path) -> None:
    cmdline = "console=ttyS0 hello=world"
    r = pyvmm(
        "run", "--kernel", guests.elf, "--initrd", initrd, "--cmdline", cmdline, "--memory", "128M"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected_lines(
        entry=0x200200,  # _start: 0x200 into the image linked at 2 MiB
        protocol=0,  # an ELF has no setup header of its own
        cmdline=cmdline,
        e820_tail=["e820: 0x0000000000100000-0x0000000007ffffff ram"],
        # 5000 bytes, page-aligned down from the top of 128 MiB
        initrd_line=initrd_line(initrd, 0x7FFE000),
        last="reset",
    )
    assert r.stderr == ""


def test_bzimage_guest_at_pref_address(guests: Guests, initrd: Path) -> None:
    r = pyvmm(
        "run", "--kernel", guests.bzimage, "--initrd", initrd, "--cmdline", "bz", "--memory", "256M"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected_lines(
        entry=PREF_ADDRESS + 0x200,  # relocatable: loaded at pref_address
        protocol=0x020F,  # copied from the image's setup header
        cmdline="bz",
        e820_tail=["e820: 0x0000000000100000-0x000000000fffffff ram"],
        initrd_line=initrd_line(initrd, 0xFFFE000),
        last="reset",
    )


def test_fixed_bzimage_loads_at_1mib_and_ram_above_4g(guests: Guests, initrd: Path) -> None:
    # 5 GiB: 3 GiB below the MMIO gap, 2 GiB from 4 GiB. The initrd stays under
    # the header's initrd_addr_max (0x7fffffff), not at the top of RAM.
    r = pyvmm("run", "--kernel", guests.bzimage_fixed, "--initrd", initrd, "--memory", "5G")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected_lines(
        entry=0x100200,
        protocol=0x020F,
        cmdline="",
        e820_tail=[
            "e820: 0x0000000000100000-0x00000000bfffffff ram",
            "e820: 0x0000000100000000-0x000000017fffffff ram",
        ],
        initrd_line=initrd_line(initrd, 0x7FFFE000),
        last="reset",
    )


def test_exactly_3g_needs_no_high_ram(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--memory", "3G")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line for line in lines if line.startswith("e820:")] == [
        *LOW_E820,
        "e820: 0x0000000000100000-0x00000000bfffffff ram",
    ]
    assert "initrd: none" in lines


def test_halt_with_interrupts_disabled_ends_the_vm(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--cmdline", "action=halt", "--memory", "64M")
    assert r.stdout.splitlines()[-1] == "halting"
    assert r.returncode == 3
    assert r.stderr == "pyvmm: guest halted with interrupts disabled\n"


@xsetbv_defect
def test_xsave_and_xrstor_in_kernel_mode(guests: Guests) -> None:
    """The guest saves XMM0 with XSAVE, clobbers it and gets it back with
    XRSTOR, at CPL0: native on hardware KVM, carried out by pyvmm on PVM."""
    r = pyvmm("run", "--kernel", guests.elf, "--cmdline", "action=xsave", "--memory", "64M")
    assert r.returncode == 0, r.stderr
    if "xsave: not supported" in r.stdout.splitlines():
        pytest.skip("the CPU has no XSAVE (as under scripts/nested-kvm.sh)")
    assert "xsave: ok" in r.stdout.splitlines()


def test_debug_adds_a_register_dump(guests: Guests) -> None:
    r = pyvmm(
        "run", "--kernel", guests.elf, "--cmdline", "action=halt", "--memory", "64M", "--debug"
    )
    assert r.returncode == 3
    assert "rflags=" in r.stderr and "cr3=0000000000009000" in r.stderr
    assert "cs: sel=0010" in r.stderr


def test_triple_fault(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--cmdline", "action=triple", "--memory", "64M")
    assert r.stdout.splitlines()[-1] == "triple fault"
    assert r.returncode == 4
    assert r.stderr == "pyvmm: vCPU 0: guest triple fault\n"


def test_second_vcpu_waits_and_the_guest_still_runs(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--cpus", "2", "--memory", "64M")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "reset"


def test_machine_api_captures_the_console(guests: Guests) -> None:
    from pyvmm.vmm.config import MachineConfig
    from pyvmm.vmm.ending import Ending
    from tests.vmm_util import run_to_end

    out = bytearray()
    result = run_to_end(MachineConfig(kernel=guests.elf, cmdline="api", memory=64 << 20), out)
    assert result.ending is Ending.RESET
    assert f"cmdline: {seen_cmdline('api')}\n".encode() in out
    assert out.endswith(b"reset\n")
