"""Extracting the uncompressed vmlinux ELF from a bzImage.

A bzImage carries the kernel as a compressed payload (boot.rst:
``payload_offset`` from the start of the protected-mode code, and
``payload_length``). Decompressing it here, once, lets pyvmm load the ELF
directly and skip the kernel's own decompressor, which runs in guest kernel
mode and is slow where that mode is emulated. The compression is recognised
by its magic bytes (the same table Linux's decompressor uses, lib/decompress.c).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from pyvmm.boot.bzimage import compression, payload
from pyvmm.boot.elf import is_elf
from pyvmm.boot.image import KernelFormatError

#: LZ4 "legacy" frames: blocks of at most 8 MiB, each after its 32-bit size.
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20


def _lz4_legacy(data: bytes, size: int) -> bytes:
    import lz4.block

    out = bytearray()
    pos = 4  # after the magic
    while pos + 4 <= len(data) and len(out) < size:
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n == LZ4_LEGACY_MAGIC:  # another frame follows
            continue
        out += lz4.block.decompress(data[pos : pos + n], uncompressed_size=LZ4_LEGACY_BLOCK)
        pos += n
    return bytes(out)


def decompress(data: bytes) -> bytes:
    """Decompress a kernel payload by its magic. Most kernels append the
    uncompressed size as a little-endian u32 (scripts/Makefile.lib size_append)."""
    kind = compression(data)
    appended_size = struct.unpack("<I", data[-4:])[0]
    if kind == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if kind == "lz4":
        return _lz4_legacy(data, appended_size)
    if kind == "zstd":
        import zstandard

        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return out
    raise KernelFormatError(f"cannot decompress a {kind} kernel payload")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The vmlinux ELF (with any relocation data the kernel appends to it)."""
    elf = decompress(payload(bzimage))
    if not is_elf(elf):
        raise KernelFormatError("the bzImage payload did not decompress to an ELF file")
    return elf
