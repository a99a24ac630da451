"""The command line: sizes, and one-line errors with exit status 2."""

from __future__ import annotations

import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

import pyvmm as pyvmm_api
from pyvmm import cli
from pyvmm.arch.x86_64 import pvm
from pyvmm.errors import UserError
from pyvmm.kvm import Kvm, lib
from pyvmm.vmm import fresh_boot
from pyvmm.vmm.config import MAX_CPUS, MachineConfig, parse_size
from tests.cli_util import one_line_error, pyvmm
from tests.guests.build import Guests

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MiB),
        ("512", 512 * MiB),
        ("2G", 2 * GiB),
        ("4096k", 4 * MiB),
        ("1GiB", GiB),
        ("1T", 1 << 40),
        ("512B", 512),  # B alone means bytes
        ("4096b", 4096),
        ("2MB", 2 * MiB),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


#: 512M and 128M in full-width and Arabic-Indic digits: only ASCII digits are sizes.
OTHER_DIGITS = ["\uff15\uff11\uff12M", "\u0661\u0662\u0668M"]


@pytest.mark.parametrize("text", ["0", "abc", "-1G", "1.5G", "", "12X", "0B", *OTHER_DIGITS])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UserError):
        parse_size(text)


def test_missing_kernel(tmp_path: Path) -> None:
    one_line_error(pyvmm("run", "--kernel", tmp_path / "nope"), "no such file")


def test_kernel_is_a_directory(tmp_path: Path) -> None:
    one_line_error(pyvmm("run", "--kernel", tmp_path), "is a directory")


def test_kernel_is_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(bytes(range(256)) * 16)
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "not a kernel")


def test_kernel_is_empty(tmp_path: Path) -> None:
    (tmp_path / "k").touch()
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "file is empty")


def test_kernel_is_a_device() -> None:
    one_line_error(pyvmm("run", "--kernel", "/dev/zero"), "is a device")


def test_kernel_unreadable(guests: Guests, tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    shutil.copy(guests.elf, kernel)
    kernel.chmod(0)
    r = pyvmm("run", "--kernel", kernel, obey_file_permissions=True)
    one_line_error(r, str(kernel), "permission denied")


def test_truncated_bzimage(guests: Guests, tmp_path: Path) -> None:
    data = guests.bzimage.read_bytes()
    (tmp_path / "half").write_bytes(data[: len(data) // 2])
    one_line_error(pyvmm("run", "--kernel", tmp_path / "half"), "bzImage is truncated")
    (tmp_path / "stub").write_bytes(data[:600])
    one_line_error(pyvmm("run", "--kernel", tmp_path / "stub"), "too short")


def test_truncated_elf(guests: Guests, tmp_path: Path) -> None:
    data = guests.elf.read_bytes()
    (tmp_path / "k").write_bytes(data[: len(data) // 2])
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "ELF")


def test_elf_for_another_architecture(guests: Guests, tmp_path: Path) -> None:
    data = bytearray(guests.elf.read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine = EM_AARCH64 (ELF gABI)
    (tmp_path / "k").write_bytes(data)
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "EM_AARCH64", "not x86-64")


def test_elf_of_the_32_bit_class(tmp_path: Path) -> None:
    # An i386 ELF header: ELFCLASS32, little-endian, ET_EXEC, EM_386, no program headers.
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x100000, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    (tmp_path / "k").write_bytes(header + bytes(2048))
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "32-bit")


def test_initrd_missing(guests: Guests, tmp_path: Path) -> None:
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--initrd", tmp_path / "nope"),
        "initrd",
        "no such file",
    )


@pytest.mark.parametrize("memory", ["0", "abc", "-1G", "5T", "1M", "512B", "4096B", *OTHER_DIGITS])
def test_bad_memory(guests: Guests, memory: str) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, f"--memory={memory}"), "memory")


def test_argument_errors_are_one_line_too(guests: Guests) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, "--memory"), "--memory")
    one_line_error(pyvmm("run", "--bogus"), "--bogus")


@pytest.mark.parametrize("cpus", ["0", "x", "-2", "\uff12"])
def test_bad_cpus(guests: Guests, cpus: str) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, "--cpus", cpus), "--cpus")


def test_cpus_beyond_kvm_limit(kvm: None, guests: Guests) -> None:
    with Kvm() as k:
        limit = k.check_extension(lib.KVM_CAP_MAX_VCPUS) or k.check_extension(lib.KVM_CAP_NR_VCPUS)
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--cpus", str(limit + 1)), f"KVM allows here ({limit})"
    )


def test_cpus_beyond_what_the_madt_describes(kvm: None, guests: Guests) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, "--cpus", str(MAX_CPUS + 1)), "--cpus 256")


def test_kvm_device_missing(guests: Guests, tmp_path: Path) -> None:
    r = pyvmm("run", "--kernel", guests.elf, kvm_device=tmp_path / "kvm")
    one_line_error(r, "does not exist", "KVM is not available")


def test_kvm_device_is_not_kvm(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, kvm_device="/dev/null")
    one_line_error(r, "/dev/null does not behave as KVM")


def test_kvm_device_not_permitted(guests: Guests, tmp_path: Path) -> None:
    locked = tmp_path / "kvm"
    locked.touch(mode=0)
    r = pyvmm("run", "--kernel", guests.elf, kvm_device=locked, obey_file_permissions=True)
    one_line_error(r, "no permission", "'kvm' group", "usermod -aG kvm")


def test_bad_input_leaves_nothing_behind(tmp_path: Path) -> None:
    """No console file, socket or log is created, and a terminal on standard
    input keeps its settings."""
    primary, secondary = pty.openpty()
    try:
        before = termios.tcgetattr(secondary)
        r = subprocess.run(
            [
                sys.executable, "-m", "pyvmm", "run", "--kernel", str(tmp_path / "nope"),
                "--console", f"unix:{tmp_path / 'sock'}", "--console-log", str(tmp_path / "log"),
            ],
            stdin=secondary, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        one_line_error(r, "no such file")
        assert termios.tcgetattr(secondary) == before
    finally:
        os.close(primary)
        os.close(secondary)
    assert list(tmp_path.iterdir()) == []
    r = pyvmm("run", "--kernel", tmp_path / "nope", "--console", f"file:{tmp_path / 'out'}")
    one_line_error(r, "no such file")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_in_process_leaves_no_threads_or_descriptors(
    guests: Guests, tmp_path: Path
) -> None:
    """The same errors through the Python API: nothing is left open or running."""
    fds = set(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for config in (
        MachineConfig(kernel=tmp_path / "nope"),
        MachineConfig(kernel=guests.elf, cmdline="x" * 5000),
        MachineConfig(kernel=guests.bzimage, memory=4 << 20),
        MachineConfig(kernel=guests.elf, cpus=MAX_CPUS + 1),
    ):
        m = pyvmm_api.Machine(config)
        with pytest.raises(UserError):
            m.start()
        m.close()
    assert threading.active_count() == threads
    assert set(os.listdir("/proc/self/fd")) == fds


def test_cmdline_too_long(guests: Guests) -> None:
    seen = len(pvm.guest_cmdline("x" * 3000)) if pvm.host_is_pvm() else 3000
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--cmdline", "x" * 3000), f"{seen} bytes", "2047"
    )


def test_initrd_too_big_for_memory(guests: Guests, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(8 * MiB)
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--initrd", big, "--memory", "8M"), "does not fit"
    )


def test_kernel_larger_than_memory(guests: Guests) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.bzimage, "--memory", "16M"), "needs RAM")


def test_a_pyvmm_failure_is_one_line_with_status_1(
    guests: Guests, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(fresh_boot.loader, "load", broken)
    assert cli.main(["run", "--kernel", str(guests.elf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "pyvmm: RuntimeError: injected (a pyvmm failure; --debug shows where)\n"
    assert cli.main(["run", "--kernel", str(guests.elf), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_help_runs() -> None:
    r = pyvmm("run", "--help")
    assert r.returncode == 0 and "--kernel" in r.stdout


@pytest.mark.usefixtures("kvm")
@pytest.mark.parametrize(
    ("disk", "words"),
    [
        ("missing.img", "--disk {d}/missing.img: No such file"),
        ("odd.img", "is not a multiple of 512"),
        ("", "Is a directory"),  # the directory itself
        (",readonly", "not a regular file or block device"),
        ("good.img,fast", "unknown option 'fast'"),
    ],
)
def test_bad_disks_are_one_line_and_leave_the_files_alone(
    guests: Guests, tmp_path: Path, disk: str, words: str
) -> None:
    (tmp_path / "odd.img").write_bytes(b"x" * 1000)
    (tmp_path / "good.img").write_bytes(bytes(4096))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = pyvmm("run", "--kernel", guests.elf, "--memory", "64M", "--disk", f"{tmp_path}/{disk}")
    one_line_error(r, words.format(d=tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_restore_keeps_its_own_devices(tmp_path: Path) -> None:
    r = pyvmm("run", "--restore", tmp_path, "--rng")
    one_line_error(r, "a restored or incoming guest keeps its own devices")
