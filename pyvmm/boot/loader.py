"""Put a kernel, its command line, an initrd and the zero page into guest RAM.

The order is the boot protocol's: parse the kernel (ELF if it has the ELF
magic, else bzImage), place its segments, write the command line at a fixed
address, place the initrd as high as the kernel allows, then fill the zero
page with the setup header, those addresses and the E820 map.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pyvmm.arch.x86_64 import layout
from pyvmm.boot.bzimage import parse_bzimage
from pyvmm.boot.e820 import E820Entry, build_e820
from pyvmm.boot.elf import is_elf, parse_elf
from pyvmm.boot.image import KernelFormatError, KernelImage
from pyvmm.boot.zeropage import (
    BOOT_FLAG,
    HDRS_MAGIC,
    LOADER_UNDEFINED,
    VID_MODE_NORMAL,
    ZeroPage,
)
from pyvmm.errors import UserError
from pyvmm.memory import GuestMemory, Range

PAGE = 4096
MiB = layout.MiB


@dataclass(frozen=True)
class BootInfo:
    """Where everything went: what the vCPU setup and a boot trace need."""

    kernel: KernelImage
    entry: int
    zero_page: int
    cmdline_addr: int
    cmdline: bytes
    initrd_addr: int
    initrd_size: int
    e820: list[E820Entry]
    #: Zero-page fields written, in order (name, value).
    zero_page_fields: tuple[tuple[str, int], ...] = ()


def read_input_file(path: str | os.PathLike[str], what: str, limit: int | None = None) -> bytes:
    """Read a user-supplied file, turning every way it can fail into one line.

    A regular file or a pipe (``--initrd <(...)``) is read; a device is
    refused, since /dev/zero would never end. No more than ``limit`` bytes
    are read: nothing larger could fit in the guest anyway.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{what} {p}: is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise UserError(f"{what} {p}: is a device or socket, not a file")
        with open(p, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {p}: no such file") from None
    except PermissionError:
        raise UserError(f"{what} {p}: permission denied") from None
    except OSError as e:
        raise UserError(f"{what} {p}: {e.strerror or e}") from None
    if not data:
        raise UserError(f"{what} {p}: file is empty")
    if limit is not None and len(data) > limit:
        raise UserError(f"{what} {p}: larger than the guest's {limit >> 20} MiB of RAM")
    return data


def parse_kernel(data: bytes) -> KernelImage:
    """ELF when the file starts with the ELF magic, otherwise a bzImage."""
    return parse_elf(data) if is_elf(data) else parse_bzimage(data)


def load_kernel_file(path: str | os.PathLike[str], limit: int | None = None) -> KernelImage:
    data = read_input_file(path, "kernel", limit)
    try:
        return parse_kernel(data)
    except KernelFormatError as e:
        raise KernelFormatError(f"kernel {path}: {e}") from None


def encode_cmdline(cmdline: str, kernel: KernelImage) -> bytes:
    """The command line as the kernel will see it, checked against its limit."""
    # Bytes that are not UTF-8 came in from argv as surrogates: give them back as they were.
    raw = cmdline.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise UserError("command line contains a NUL byte")
    limit = min(kernel.cmdline_max, layout.CMDLINE_AREA_SIZE - 1)
    if len(raw) > limit:
        raise UserError(f"command line is {len(raw)} bytes; this kernel accepts at most {limit}")
    return raw


def low_ram_end(ram: list[Range]) -> int:
    """End of the RAM that starts at address 0 (below the MMIO gap)."""
    return ram[0].end


def check_kernel_fits(kernel: KernelImage, ram: list[Range]) -> None:
    top = low_ram_end(ram)
    if kernel.end > top:
        need = (kernel.end + MiB - 1) // MiB
        raise UserError(
            f"the {kernel.kind} kernel needs RAM up to {kernel.end:#x} ({need} MiB); "
            f"--memory gives {top // MiB} MiB below 4 GiB"
        )


def place_initrd(size: int, kernel: KernelImage, ram: list[Range]) -> int:
    """The highest page-aligned address for the initrd under both the kernel's
    initrd_addr_max and the top of low RAM, and above the kernel."""
    top = min(kernel.initrd_addr_max + 1, low_ram_end(ram))
    addr = (top - size) & ~(PAGE - 1)
    floor = (kernel.end + PAGE - 1) & ~(PAGE - 1)
    if size > top or addr < floor:
        raise UserError(
            f"initrd of {size} bytes does not fit between the kernel's end ({floor:#x}) "
            f"and {top:#x}; give more --memory or a smaller initrd"
        )
    return addr


def load(
    memory: GuestMemory,
    kernel: KernelImage,
    cmdline: str,
    initrd: bytes | None = None,
    acpi_rsdp: int = 0,
) -> BootInfo:
    """Write kernel, command line, initrd and zero page into ``memory``
    (``acpi_rsdp``: the RSDP's address, when the caller wrote ACPI tables)."""
    ram = memory.ranges
    check_kernel_fits(kernel, ram)
    raw_cmdline = encode_cmdline(cmdline, kernel)
    initrd_addr = place_initrd(len(initrd), kernel, ram) if initrd else 0

    for seg in kernel.segments:
        memory.write(seg.addr, seg.data)
        memory.fill(seg.addr + len(seg.data), seg.mem_size - len(seg.data))
    memory.fill(layout.CMDLINE_ADDR, layout.CMDLINE_AREA_SIZE)
    memory.write(layout.CMDLINE_ADDR, raw_cmdline)
    if initrd:
        memory.write(initrd_addr, initrd)

    zp = ZeroPage()
    if kernel.setup_header is not None:
        zp.copy_setup_header(kernel.setup_header.raw)
        zp["code32_start"] = kernel.segments[0].addr
        zp["vid_mode"] = VID_MODE_NORMAL
    else:
        # An ELF kernel has no header of its own; give it the fields Linux
        # reads on the 64-bit path so it recognises a boot loader.
        zp["boot_flag"] = BOOT_FLAG
        zp["header"] = HDRS_MAGIC
    zp["type_of_loader"] = LOADER_UNDEFINED
    zp.set_cmdline(layout.CMDLINE_ADDR)
    if initrd:
        zp.set_initrd(initrd_addr, len(initrd))
    if acpi_rsdp:
        zp.set_acpi_rsdp(acpi_rsdp)
    e820 = build_e820(ram)
    zp.set_e820(e820)
    memory.write(layout.ZERO_PAGE_ADDR, zp.buf)

    return BootInfo(
        kernel=kernel,
        entry=kernel.entry,
        zero_page=layout.ZERO_PAGE_ADDR,
        cmdline_addr=layout.CMDLINE_ADDR,
        cmdline=raw_cmdline,
        initrd_addr=initrd_addr,
        initrd_size=len(initrd) if initrd else 0,
        e820=e820,
        zero_page_fields=tuple(zp.written),
    )
