"""``pyvmm inspect KERNEL``: what the loader sees in a kernel file, without
running it.

For an ELF: the file header and every program header, and which segments
pyvmm would load where. For a bzImage: the boot protocol version, every
setup-header field that version defines, the kernel version string, the
payload's compression and where pyvmm would put the protected-mode code.
"""

from __future__ import annotations

import io
import os
import struct

from elftools.elf.elffile import ELFFile

from pyvmm.boot.bzimage import compression, setup_size
from pyvmm.boot.elf import is_elf
from pyvmm.boot.image import KernelFormatError, KernelImage
from pyvmm.boot.loader import parse_kernel, read_input_file
from pyvmm.boot.zeropage import HEADER_FIELDS, get_field, header_end

#: Program-header flags (ELF gABI): execute, write, read.
_PF = ((4, "R"), (2, "W"), (1, "X"))


def describe(path: str | os.PathLike[str]) -> str:
    """A report on the kernel at ``path``; raises UserError if it is not one."""
    data = read_input_file(path, "kernel")
    try:
        kernel = parse_kernel(data)
    except KernelFormatError as e:
        raise KernelFormatError(f"kernel {path}: {e}") from None
    lines = [f"{path}: {len(data)} bytes, {kernel.kind}"]
    lines += _elf(data) if is_elf(data) else _bzimage(data, kernel)
    lines.append("pyvmm would load:")
    for seg in kernel.segments:
        lines.append(
            f"  {len(seg.data):>10} bytes at {seg.addr:#x}"
            + (f" + {seg.mem_size - len(seg.data)} zeroed" if seg.mem_size > len(seg.data) else "")
        )
    lines.append(f"  64-bit entry point {kernel.entry:#x}")
    lines.append(f"  needs RAM up to {kernel.end:#x} ({(kernel.end + (1 << 20) - 1) >> 20} MiB)")
    lines.append(f"  command line up to {kernel.cmdline_max} bytes")
    lines.append(f"  initrd anywhere below {kernel.initrd_addr_max + 1:#x}")
    return "\n".join(lines) + "\n"


def _elf(data: bytes) -> list[str]:
    elf = ELFFile(io.BytesIO(data))
    lines = [
        f"ELF{elf.elfclass}, {'little' if elf.little_endian else 'big'}-endian, "
        f"{elf['e_machine']}, {elf['e_type']}, entry {elf['e_entry']:#x}",
        "program headers:",
        f"  {'type':<14} {'offset':>10} {'vaddr':>18} {'paddr':>12} {'filesz':>10} "
        f"{'memsz':>10} flags",
    ]
    for seg in elf.iter_segments():
        h = seg.header
        flags = "".join(c if h["p_flags"] & bit else "-" for bit, c in _PF)
        lines.append(
            f"  {h['p_type']:<14} {h['p_offset']:>#10x} {h['p_vaddr']:>#18x} {h['p_paddr']:>#12x} "
            f"{h['p_filesz']:>#10x} {h['p_memsz']:>#10x} {flags}"
        )
    return lines


def _bzimage(data: bytes, kernel: KernelImage) -> list[str]:
    hdr = kernel.setup_header
    assert hdr is not None
    lines = [f"Linux boot protocol {hdr.protocol} (Documentation/arch/x86/boot.rst)"]
    release = _kernel_version(data)
    if release:
        lines.append(f"kernel version: {release}")
    setup = setup_size(hdr)
    lines.append(f"real-mode setup: {setup} bytes; protected-mode code: {len(data) - setup} bytes")
    payload = data[setup + hdr.payload_offset : setup + hdr.payload_offset + hdr.payload_length]
    lines.append(
        f"payload: {hdr.payload_length} bytes at offset {hdr.payload_offset:#x} of the "
        f"protected-mode code, {compression(payload) if payload else 'none'}"
    )
    lines.append(
        f"preferred load address {hdr.pref_address:#x}, "
        f"{'relocatable' if hdr.relocatable_kernel else 'not relocatable'}, "
        f"alignment {hdr.kernel_alignment:#x}"
    )
    lines.append("setup header:")
    end = header_end(data)
    for name, (offset, fmt) in HEADER_FIELDS.items():
        if offset + struct.calcsize(fmt) > end:
            break  # not defined by this protocol version
        value = get_field(data, name)
        lines.append(f"  {offset:#05x} {name:<22} {value:#x}")
    return lines


def _kernel_version(data: bytes) -> str:
    """The string kernel_version points at (offset from 0x200, protocol 2.00+)."""
    pointer = get_field(data, "kernel_version")
    if not pointer:
        return ""
    start = pointer + 0x200
    end = data.find(b"\0", start, start + 256)
    return data[start:end].decode("ascii", "replace") if end > start else ""
