"""Image building without KVM: the cpio writer, the initramfs layout and
extracting vmlinux from bzImage payloads of every supported compression."""

from __future__ import annotations

import bz2
import gzip
import lzma
import stat
import struct
from pathlib import Path

import lz4.block
import pytest
import zstandard

from pyvmm.boot.image import KernelFormatError
from pyvmm.boot.zeropage import put_field
from pyvmm.images import cpio, default, initramfs
from pyvmm.images.vmlinux import compression, extract_vmlinux
from tests.cpio_util import read_newc
from tests.guests.build import Guests, make_bzimage

REPO = Path(__file__).resolve().parents[1]


def test_cpio_round_trip() -> None:
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/x", b"hello", 0o755),
        cpio.symlink("bin/y", "x"),
        cpio.char_device("dev/console", 5, 1),
        cpio.file("odd", b"abc"),  # sizes that need padding
    ]
    got = read_newc(cpio.archive(entries))
    assert [(n, stat.S_IFMT(m), d, r) for n, m, d, r in got] == [
        ("bin", stat.S_IFDIR, b"", (0, 0)),
        ("bin/x", stat.S_IFREG, b"hello", (0, 0)),
        ("bin/y", stat.S_IFLNK, b"x", (0, 0)),
        ("dev/console", stat.S_IFCHR, b"", (5, 1)),
        ("odd", stat.S_IFREG, b"abc", (0, 0)),
    ]
    assert stat.S_IMODE(got[1][1]) == 0o755


def test_cpio_is_reproducible() -> None:
    entries = [cpio.file("a", b"1")]
    assert cpio.archive(entries) == cpio.archive(entries)
    assert read_newc(cpio.archive(entries))[0][2] == b"1"


def test_initramfs_layout(tmp_path: Path) -> None:
    # A stand-in for busybox: a script that lists two applets.
    fake = tmp_path / "busybox"
    fake.write_text("#!/bin/sh\necho sh\necho mount\necho busybox\n")
    fake.chmod(0o755)
    init = (REPO / "images" / "init").read_bytes()
    entries = {n: (m, d) for n, m, d, _ in read_newc(initramfs.build(fake, init))}
    assert entries["init"] == (stat.S_IFREG | 0o755, init)
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert entries["bin/mount"][1] == b"busybox"
    assert "bin/busybox" in entries and not any(
        n == "bin/busybox" and stat.S_ISLNK(m) for n, (m, _) in entries.items()
    )
    for d in ("proc", "sys", "dev", "tmp"):
        assert stat.S_ISDIR(entries[d][0])


def _compress(kind: str, data: bytes) -> bytes:
    size = struct.pack("<I", len(data))  # the kernel's size_append
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ) + size
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE) + size
    if kind == "bzip2":
        return bz2.compress(data) + size
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data) + size
    if kind == "lz4":  # legacy frames: magic, then (size, block) pairs of <= 8 MiB
        blocks = [data[i : i + (8 << 20)] for i in range(0, len(data), 8 << 20)]
        out = struct.pack("<I", 0x184C2102)
        for b in blocks:
            c = lz4.block.compress(b, store_size=False)
            out += struct.pack("<I", len(c)) + c
        return out + size
    raise AssertionError(kind)


def bzimage_with_payload(payload: bytes, offset: int = 0x400) -> bytes:
    pm = b"\x90" * offset + payload
    image = bytearray(make_bzimage(pm, relocatable=False))
    put_field(image, "payload_offset", offset)
    put_field(image, "payload_length", len(payload))
    return bytes(image)


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "bzip2", "zstd", "lz4"])
def test_extract_vmlinux(kind: str, guests: Guests) -> None:
    elf = guests.elf.read_bytes() + bytes(range(256)) * 40  # relocations ride along
    payload = _compress(kind, elf)
    assert compression(payload) == kind
    assert extract_vmlinux(bzimage_with_payload(payload)) == elf


def test_lz4_payload_of_several_blocks() -> None:
    elf = b"\x7fELF" + bytes(9 << 20)
    assert extract_vmlinux(bzimage_with_payload(_compress("lz4", elf))) == elf


def test_payload_that_is_not_an_elf() -> None:
    with pytest.raises(KernelFormatError, match="did not decompress to an ELF"):
        extract_vmlinux(bzimage_with_payload(gzip.compress(b"not an elf")))


def test_unknown_or_missing_payload() -> None:
    with pytest.raises(KernelFormatError, match="cannot decompress"):
        extract_vmlinux(bzimage_with_payload(b"\x00" * 64))
    with pytest.raises(KernelFormatError, match="no payload"):
        extract_vmlinux(make_bzimage(b"\x90" * 64, relocatable=False))


def test_the_stock_kernels_modules_follow_the_initramfs(tmp_path: Path) -> None:
    paths = list(default.STOCK_MODULES)
    mods = initramfs.modules([p.encode() for p in paths], paths)
    names = {n: d for n, _, d, _ in read_newc(mods)}
    assert names["lib/modules/pyvmm/01-pvpanic.ko"] == paths[0].encode()  # loaded first
    assert names["lib/modules/pyvmm/02-pvpanic-mmio.ko"] == paths[1].encode()
    assert len([n for n in names if n.endswith(".ko")]) == len(paths)
    (tmp_path / "busybox-1-abc").mkdir()
    base = tmp_path / "busybox-1-abc" / "initramfs.cpio"
    base.write_bytes(cpio.archive([cpio.file("init", b"#!/bin/sh\n")]))
    (tmp_path / "stock").mkdir()
    modules = tmp_path / "stock" / default.MODULES
    modules.write_bytes(mods)
    both = default._with_modules(base, modules)
    assert both.parent == modules.parent
    assert both.read_bytes() == base.read_bytes() + mods  # two archives, one after the other
    both.write_bytes(both.read_bytes()[:100])  # a truncated one is made again
    assert default._with_modules(base, modules).read_bytes() == base.read_bytes() + mods
    assert default._with_modules(base, None) == base  # the small kernel needs none
