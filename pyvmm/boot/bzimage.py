"""Loading a bzImage by the Linux x86 boot protocol (Documentation/arch/x86/boot.rst).

pyvmm uses the 64-bit boot protocol: the real-mode setup code is not run; the
protected-mode part of the file is placed at its load address and the vCPU
starts in long mode at load address + 0x200.
"""

from __future__ import annotations

from pyvmm.arch.x86_64 import layout
from pyvmm.boot.image import KernelFormatError, KernelImage, Segment
from pyvmm.boot.zeropage import (
    BOOT_FLAG,
    HDRS_MAGIC,
    LOADED_HIGH,
    XLF_KERNEL_64,
    SetupHeader,
)

SECTOR = 512
#: setup_sects == 0 means 4 (boot.rst, "setup_sects").
DEFAULT_SETUP_SECTS = 4
#: The 64-bit entry point is this far into the protected-mode code (boot.rst).
ENTRY_64_OFFSET = 0x200
#: Oldest protocol with xloadflags, which says whether the 64-bit entry exists (2.12).
MIN_VERSION = 0x020C
#: cmdline_size is defined from protocol 2.06; before it the limit was 255 (boot.rst).
CMDLINE_SIZE_VERSION = 0x0206
OLD_CMDLINE_MAX = 255
#: The smallest file that holds a complete modern setup header.
MIN_FILE_SIZE = 2 * SECTOR


def setup_size(hdr: SetupHeader) -> int:
    """Bytes before the protected-mode code: the boot sector and the real-mode
    setup code, ``setup_sects`` sectors (0 means 4; boot.rst)."""
    return ((hdr.setup_sects or DEFAULT_SETUP_SECTS) + 1) * SECTOR


def looks_like_bzimage(data: bytes) -> bool:
    return len(data) >= MIN_FILE_SIZE and SetupHeader.parse(data).header == HDRS_MAGIC


def parse_bzimage(data: bytes) -> KernelImage:
    """Parse a bzImage; raises KernelFormatError saying what is wrong."""
    if len(data) < MIN_FILE_SIZE:
        raise KernelFormatError(
            f"file is {len(data)} bytes: too short for an ELF kernel or a bzImage"
        )
    hdr = SetupHeader.parse(data)
    if hdr.header != HDRS_MAGIC:
        raise KernelFormatError(
            "not a kernel: no ELF magic, and no bzImage boot header ('HdrS' at 0x202)"
        )
    if hdr.boot_flag != BOOT_FLAG:
        raise KernelFormatError(f"bzImage boot_flag is {hdr.boot_flag:#06x}, expected 0xaa55")
    if hdr.version < MIN_VERSION:
        raise KernelFormatError(
            f"bzImage boot protocol {hdr.protocol} is too old: pyvmm needs 2.12 or newer"
        )
    if not hdr.loadflags & LOADED_HIGH:
        raise KernelFormatError("zImage (loaded low) is not supported: LOADED_HIGH is not set")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise KernelFormatError("bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)")

    setup = setup_size(hdr)
    # syssize is the protected-mode code's size in 16-byte paragraphs (boot.rst).
    pm_size = hdr.syssize * 16
    if pm_size == 0:
        raise KernelFormatError("bzImage syssize is 0: no protected-mode code")
    if setup + pm_size > len(data):
        raise KernelFormatError(
            f"bzImage is truncated: the header describes {setup + pm_size} bytes, "
            f"the file has {len(data)}"
        )
    protected_mode = data[setup:]

    load_addr = layout.HIMEM_START
    align = hdr.kernel_alignment
    if (
        hdr.relocatable_kernel
        and hdr.pref_address >= layout.HIMEM_START
        and (align == 0 or hdr.pref_address % align == 0)
    ):
        load_addr = hdr.pref_address

    cmdline_max = hdr.cmdline_size if hdr.version >= CMDLINE_SIZE_VERSION else OLD_CMDLINE_MAX
    return KernelImage(
        kind="bzImage",
        entry=load_addr + ENTRY_64_OFFSET,
        segments=(Segment(load_addr, protected_mode, len(protected_mode)),),
        setup_header=hdr,
        cmdline_max=cmdline_max,
        initrd_addr_max=hdr.initrd_addr_max,
        # init_size (protocol 2.10+) is the memory the kernel needs from its load address.
        footprint=max(hdr.init_size, len(protected_mode)),
    )


#: Magic bytes at the start of each kind of payload.
MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\x1f\x9e": "gzip",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\xfd7zXZ\x00": "xz",
    b"\x89LZO": "lzo",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage."""
    parse_bzimage(bzimage)  # checks the header, raises KernelFormatError
    hdr = SetupHeader.parse(bzimage)
    start = setup_size(hdr) + hdr.payload_offset
    end = start + hdr.payload_length
    if hdr.payload_length == 0 or end > len(bzimage):
        raise KernelFormatError("bzImage has no payload inside the file (payload_offset/length)")
    return bzimage[start:end]


def compression(data: bytes) -> str:
    """The payload's compression, by its magic bytes (as lib/decompress.c knows them)."""
    for magic, name in MAGICS.items():
        if data.startswith(magic):
            return name
    return "unknown"
