"""The command line: sizes, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import pvm
from pyvmm.cli import parse_size
from pyvmm.errors import UserError
from tests.cli_util import pyvmm
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
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "abc", "-1G", "1.5G", "", "12X"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UserError):
        parse_size(text)


def one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvmm: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_kernel(tmp_path: Path) -> None:
    one_line_error(pyvmm("run", "--kernel", tmp_path / "nope"), "no such file")


def test_kernel_is_a_directory(tmp_path: Path) -> None:
    one_line_error(pyvmm("run", "--kernel", tmp_path), "is a directory")


def test_kernel_is_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(bytes(range(256)) * 16)
    one_line_error(pyvmm("run", "--kernel", tmp_path / "k"), "not a kernel")


@pytest.mark.parametrize("memory", ["0", "abc", "-1G", "5T", "1M"])
def test_bad_memory(guests: Guests, memory: str) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, f"--memory={memory}"), "memory")


def test_argument_errors_are_one_line_too(guests: Guests) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, "--memory"), "--memory")
    one_line_error(pyvmm("run", "--bogus"), "--bogus")


@pytest.mark.parametrize("cpus", ["0", "x"])
def test_bad_cpus(guests: Guests, cpus: str) -> None:
    one_line_error(pyvmm("run", "--kernel", guests.elf, "--cpus", cpus), "--cpus")


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


def test_help_runs() -> None:
    r = pyvmm("run", "--help")
    assert r.returncode == 0 and "--kernel" in r.stdout
