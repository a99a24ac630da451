"""``pyvmm inspect``: what the loader sees, without KVM."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.cli_util import one_line_error, pyvmm
from tests.guests.build import PREF_ADDRESS, Guests, make_bzimage


def test_inspect_bzimage(guests: Guests) -> None:
    r = pyvmm("inspect", guests.bzimage)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Linux boot protocol 2.15" in out
    assert f"preferred load address {PREF_ADDRESS:#x}, relocatable" in out
    assert "payload: 0 bytes at offset 0x0 of the protected-mode code, none" in out
    assert "  0x1fe boot_flag              0xaa55\n" in out
    assert "  0x202 header                 0x53726448\n" in out
    # Protocol 2.15 defines the header up to kernel_info_offset (0x268).
    assert out.count("\n  0x2") + out.count("\n  0x1") == 39
    size = guests.bzimage.stat().st_size - 1024  # after one setup sector and the boot sector
    assert f"pyvmm would load:\n  {size:>10} bytes at {PREF_ADDRESS:#x}\n" in out
    assert f"64-bit entry point {PREF_ADDRESS + 0x200:#x}" in out


def test_inspect_elf(guests: Guests) -> None:
    r = pyvmm("inspect", guests.elf)
    assert r.returncode == 0, r.stderr
    assert "ELF64, little-endian, EM_X86_64, ET_EXEC, entry 0x200200" in r.stdout
    loads = [line for line in r.stdout.splitlines() if line.startswith("  PT_LOAD")]
    assert len(loads) == 2 and loads[0].endswith("R-X") and loads[1].endswith("RW-")
    assert "64-bit entry point 0x200200" in r.stdout


def test_inspect_names_the_payload_compression(tmp_path: Path) -> None:
    payload = b"\x02\x21\x4c\x18" + bytes(60)  # an LZ4 legacy frame's magic
    image = bytearray(make_bzimage(b"\x90" * 0x300 + payload, relocatable=True))
    struct.pack_into("<II", image, 0x248, 0x300, len(payload))  # payload_offset, _length
    (tmp_path / "k").write_bytes(image)
    r = pyvmm("inspect", tmp_path / "k")
    assert "payload: 64 bytes at offset 0x300 of the protected-mode code, lz4" in r.stdout


def test_inspect_bad_file(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"\x01" * 4096)
    r = pyvmm("inspect", tmp_path / "k")
    one_line_error(r)
    assert r.stderr.startswith(f"pyvmm: kernel {tmp_path / 'k'}: not a kernel")
