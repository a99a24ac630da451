"""The zero page (``struct boot_params``) and its setup header.

Offsets are those of Documentation/arch/x86/zero-page.rst and boot.rst; the
test suite checks each one against the system's <asm/bootparam.h>. The setup
header sits at the same offset (0x1f1) in a bzImage file and in the zero page,
so one table of offsets serves both parsing the kernel and filling the page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.boot.e820 import E820Entry

ZERO_PAGE_SIZE = 4096

# struct boot_params fields outside the setup header (zero-page.rst).
ACPI_RSDP_ADDR = 0x070  # u64: physical address of the ACPI RSDP
EXT_RAMDISK_IMAGE = 0x0C0  # u32: high 32 bits of ramdisk_image
EXT_RAMDISK_SIZE = 0x0C4  # u32: high 32 bits of ramdisk_size
EXT_CMD_LINE_PTR = 0x0C8  # u32: high 32 bits of cmd_line_ptr
E820_ENTRIES = 0x1E8  # u8: number of entries in e820_table
SETUP_HEADER = 0x1F1  # struct setup_header
E820_TABLE = 0x2D0  # struct boot_e820_entry[E820_MAX_ENTRIES]
E820_MAX_ENTRIES = 128  # E820_MAX_ENTRIES_ZEROPAGE
E820_ENTRY_FORMAT = "<QQI"  # packed: addr, size, type (20 bytes)

# struct setup_header: name -> (offset in the zero page and in a bzImage, format).
HEADER_FIELDS: dict[str, tuple[int, str]] = {
    "setup_sects": (0x1F1, "B"),
    "root_flags": (0x1F2, "H"),
    "syssize": (0x1F4, "I"),
    "ram_size": (0x1F8, "H"),
    "vid_mode": (0x1FA, "H"),
    "root_dev": (0x1FC, "H"),
    "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"),
    "header": (0x202, "I"),
    "version": (0x206, "H"),
    "realmode_swtch": (0x208, "I"),
    "start_sys_seg": (0x20C, "H"),
    "kernel_version": (0x20E, "H"),
    "type_of_loader": (0x210, "B"),
    "loadflags": (0x211, "B"),
    "setup_move_size": (0x212, "H"),
    "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"),
    "ramdisk_size": (0x21C, "I"),
    "bootsect_kludge": (0x220, "I"),
    "heap_end_ptr": (0x224, "H"),
    "ext_loader_ver": (0x226, "B"),
    "ext_loader_type": (0x227, "B"),
    "cmd_line_ptr": (0x228, "I"),
    "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"),
    "relocatable_kernel": (0x234, "B"),
    "min_alignment": (0x235, "B"),
    "xloadflags": (0x236, "H"),
    "cmdline_size": (0x238, "I"),
    "hardware_subarch": (0x23C, "I"),
    "hardware_subarch_data": (0x240, "Q"),
    "payload_offset": (0x248, "I"),
    "payload_length": (0x24C, "I"),
    "setup_data": (0x250, "Q"),
    "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
    "handover_offset": (0x264, "I"),
    "kernel_info_offset": (0x268, "I"),
}

# Values from boot.rst.
BOOT_FLAG = 0xAA55  # boot_flag: the old boot-sector signature
HDRS_MAGIC = 0x53726448  # header: "HdrS" read as a little-endian u32
LOADER_UNDEFINED = 0xFF  # type_of_loader: "undefined" boot loader id
LOADED_HIGH = 1 << 0  # loadflags: protected-mode code goes at 0x100000
XLF_KERNEL_64 = 1 << 0  # xloadflags: 64-bit entry at load address + 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1  # xloadflags
VID_MODE_NORMAL = 0xFFFF  # vid_mode: "normal" (no mode switch)


def header_end(image: bytes | bytearray | memoryview) -> int:
    """End of the setup header: 0x202 + the byte at 0x201 (boot.rst)."""
    return 0x202 + image[0x201]


def get_field(buf: bytes | bytearray | memoryview, name: str) -> int:
    offset, fmt = HEADER_FIELDS[name]
    value: int = struct.unpack_from("<" + fmt, buf, offset)[0]
    return value


def put_field(buf: bytearray | memoryview, name: str, value: int) -> None:
    offset, fmt = HEADER_FIELDS[name]
    struct.pack_into("<" + fmt, buf, offset, value)


@dataclass(frozen=True)
class SetupHeader:
    """The setup-header fields the loader acts on, plus the raw header bytes."""

    setup_sects: int
    syssize: int
    boot_flag: int
    header: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    xloadflags: int
    cmdline_size: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int
    raw: bytes  # bytes 0x1f1 .. header_end() of the image

    @property
    def protocol(self) -> str:
        """The boot protocol version as boot.rst writes it, e.g. "2.15"."""
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @classmethod
    def parse(cls, image: bytes | bytearray | memoryview) -> SetupHeader:
        """Read the header of a bzImage (at least 1 KiB; the caller checks)."""
        end = min(header_end(image), len(image), ZERO_PAGE_SIZE)
        return cls(
            setup_sects=get_field(image, "setup_sects"),
            syssize=get_field(image, "syssize"),
            boot_flag=get_field(image, "boot_flag"),
            header=get_field(image, "header"),
            version=get_field(image, "version"),
            loadflags=get_field(image, "loadflags"),
            initrd_addr_max=get_field(image, "initrd_addr_max"),
            kernel_alignment=get_field(image, "kernel_alignment"),
            relocatable_kernel=get_field(image, "relocatable_kernel"),
            xloadflags=get_field(image, "xloadflags"),
            cmdline_size=get_field(image, "cmdline_size"),
            payload_offset=get_field(image, "payload_offset"),
            payload_length=get_field(image, "payload_length"),
            pref_address=get_field(image, "pref_address"),
            init_size=get_field(image, "init_size"),
            raw=bytes(image[SETUP_HEADER:end]),
        )


class ZeroPage:
    """A ``struct boot_params`` under construction, initially all zero."""

    def __init__(self) -> None:
        self.buf = bytearray(ZERO_PAGE_SIZE)
        #: (field, value) in the order written, for ``--trace boot``.
        self.written: list[tuple[str, int]] = []

    def copy_setup_header(self, raw: bytes) -> None:
        """Copy a kernel's setup header in (the 16/32/64-bit protocols all start so)."""
        self.buf[SETUP_HEADER : SETUP_HEADER + len(raw)] = raw
        self.written.append(("setup_header bytes copied from the kernel", len(raw)))

    def __getitem__(self, name: str) -> int:
        return get_field(self.buf, name)

    def __setitem__(self, name: str, value: int) -> None:
        put_field(self.buf, name, value)
        self.written.append((name, value))

    def _put(self, name: str, fmt: str, offset: int, value: int) -> None:
        """A field outside the setup header."""
        struct.pack_into(fmt, self.buf, offset, value)
        self.written.append((name, value))

    def set_cmdline(self, addr: int) -> None:
        self["cmd_line_ptr"] = addr & 0xFFFFFFFF
        self._put("ext_cmd_line_ptr", "<I", EXT_CMD_LINE_PTR, addr >> 32)

    def set_acpi_rsdp(self, addr: int) -> None:
        """Where the RSDP is (boot protocol 2.14+; older kernels scan for it)."""
        self._put("acpi_rsdp_addr", "<Q", ACPI_RSDP_ADDR, addr)

    def set_initrd(self, addr: int, size: int) -> None:
        self["ramdisk_image"] = addr & 0xFFFFFFFF
        self["ramdisk_size"] = size & 0xFFFFFFFF
        self._put("ext_ramdisk_image", "<I", EXT_RAMDISK_IMAGE, addr >> 32)
        self._put("ext_ramdisk_size", "<I", EXT_RAMDISK_SIZE, size >> 32)

    def set_e820(self, entries: list[E820Entry]) -> None:
        if len(entries) > E820_MAX_ENTRIES:
            raise ValueError(f"{len(entries)} E820 entries; the zero page holds {E820_MAX_ENTRIES}")
        self._put("e820_entries", "<B", E820_ENTRIES, len(entries))
        size = struct.calcsize(E820_ENTRY_FORMAT)
        for i, e in enumerate(entries):
            struct.pack_into(
                E820_ENTRY_FORMAT, self.buf, E820_TABLE + i * size, e.start, e.size, e.type
            )

    def e820(self) -> list[E820Entry]:
        size = struct.calcsize(E820_ENTRY_FORMAT)
        return [
            E820Entry(*struct.unpack_from(E820_ENTRY_FORMAT, self.buf, E820_TABLE + i * size))
            for i in range(self.buf[E820_ENTRIES])
        ]
