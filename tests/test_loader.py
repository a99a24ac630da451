"""The kernel loader without KVM: ELF and bzImage parsing, initrd placement,
command-line limits and what lands in guest memory."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.layout import ram_ranges
from pyvmm.boot import loader
from pyvmm.boot.bzimage import parse_bzimage
from pyvmm.boot.elf import parse_elf
from pyvmm.boot.image import KernelFormatError, KernelImage, Segment
from pyvmm.boot.zeropage import ZeroPage
from pyvmm.errors import UserError
from pyvmm.memory import GuestMemory
from tests.guests.build import PREF_ADDRESS, Guests, make_bzimage

MiB = 1 << 20

# -- ELF -------------------------------------------------------------------


def test_elf_segments_and_entry(guests: Guests) -> None:
    image = parse_elf(guests.elf.read_bytes())
    assert image.kind == "ELF"
    assert image.entry == 0x200200
    with open(guests.elf, "rb") as f:  # the program headers, read independently
        loads = [seg["p_paddr"] for seg in ELFFile(f).iter_segments() if seg["p_type"] == "PT_LOAD"]
    assert [s.addr for s in image.segments] == loads
    assert loads[0] == 0x200000 and loads[1] % 0x1000 == 0  # linked at 2 MiB (guest.ld)
    code, data = image.segments
    assert code.data[0x200:0x207] == (guests.elf.read_bytes()[0x1200:0x1207])
    assert len(data.data) == 0 and data.mem_size > 0x2000  # BSS only: stack and tables
    assert image.cmdline_max == 2047


def _elf_with(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_elf_for_another_machine(guests: Guests) -> None:
    data = _elf_with(guests.elf.read_bytes(), 0x12, "<H", 183)  # e_machine = EM_AARCH64
    with pytest.raises(KernelFormatError, match="EM_AARCH64, not x86-64"):
        parse_elf(data)


def test_elf_of_32_bit_class(guests: Guests) -> None:
    data = bytearray(guests.elf.read_bytes()[:0x34])
    data[4] = 1  # ELFCLASS32, with a 32-bit header
    struct.pack_into("<HHIIIIIHHHHHH", data, 0x10, 2, 62, 1, 0x100000, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    with pytest.raises(KernelFormatError, match="32-bit"):
        parse_elf(bytes(data))


def test_truncated_elf(guests: Guests) -> None:
    with pytest.raises(KernelFormatError, match=r"truncated|not a valid ELF"):
        parse_elf(guests.elf.read_bytes()[:0x1100])
    with pytest.raises(KernelFormatError, match="not a valid ELF"):
        parse_elf(guests.elf.read_bytes()[:30])


def test_elf_without_load_segments(guests: Guests) -> None:
    data = _elf_with(guests.elf.read_bytes(), 0x38, "<H", 0)  # e_phnum = 0
    with pytest.raises(KernelFormatError, match="no loadable"):
        parse_elf(data)


def test_elf_entry_outside_segments(guests: Guests) -> None:
    data = _elf_with(guests.elf.read_bytes(), 0x18, "<Q", 0x900000)
    with pytest.raises(KernelFormatError, match="entry point 0x900000"):
        parse_elf(data)


def test_elf_segment_below_1mib(guests: Guests) -> None:
    data = guests.elf.read_bytes()
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    data = _elf_with(data, phoff + 0x18, "<Q", 0x7000)  # first p_paddr onto the zero page
    with pytest.raises(KernelFormatError, match="below 1 MiB"):
        parse_elf(data)


# -- bzImage ---------------------------------------------------------------

PM = b"\x90" * 0x300  # a stand-in protected-mode part


def test_bzimage_relocatable_goes_to_pref_address() -> None:
    image = parse_bzimage(make_bzimage(PM, relocatable=True))
    assert image.kind == "bzImage"
    assert image.segments[0].addr == PREF_ADDRESS
    assert image.entry == PREF_ADDRESS + 0x200
    assert image.segments[0].data == PM
    assert image.setup_header is not None and image.setup_header.version == 0x020F


def test_bzimage_not_relocatable_goes_to_1mib() -> None:
    image = parse_bzimage(make_bzimage(PM, relocatable=False))
    assert image.segments[0].addr == 0x100000
    assert image.entry == 0x100200


def test_bzimage_misaligned_pref_address_falls_back_to_1mib() -> None:
    image = parse_bzimage(make_bzimage(PM, relocatable=True, pref_address=0x1001000))
    assert image.segments[0].addr == 0x100000


def test_bzimage_footprint_is_init_size() -> None:
    image = parse_bzimage(make_bzimage(PM, relocatable=False))
    assert image.end == 0x100000 + 0x40000


def test_bzimage_limits_come_from_the_header() -> None:
    image = parse_bzimage(
        make_bzimage(PM, relocatable=False, cmdline_size=100, initrd_addr_max=0x37FFFFFF)
    )
    assert image.cmdline_max == 100
    assert image.initrd_addr_max == 0x37FFFFFF


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.__setitem__(slice(0x202, 0x206), b"XXXX"), "no bzImage boot header"),
        (lambda b: b.__setitem__(slice(0x1FE, 0x200), b"\0\0"), "boot_flag"),
        (lambda b: struct.pack_into("<H", b, 0x206, 0x0208), "protocol 2.08 is too old"),
        (lambda b: b.__setitem__(0x211, 0), "LOADED_HIGH"),
        (lambda b: struct.pack_into("<H", b, 0x236, 0), "no 64-bit entry point"),
        (lambda b: struct.pack_into("<I", b, 0x1F4, 0), "syssize is 0"),
    ],
)
def test_bad_bzimages(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(make_bzimage(PM, relocatable=False))
    mutate(data)
    with pytest.raises(KernelFormatError, match=message):
        parse_bzimage(bytes(data))


def test_truncated_bzimage() -> None:
    data = make_bzimage(PM, relocatable=False)
    with pytest.raises(KernelFormatError, match="truncated"):
        parse_bzimage(data[:-16])
    with pytest.raises(KernelFormatError, match="too short"):
        parse_bzimage(data[:600])


def test_kernel_detection() -> None:
    with pytest.raises(KernelFormatError, match="no ELF magic"):
        loader.parse_kernel(b"\x12" * 4096)
    assert loader.parse_kernel(make_bzimage(PM, relocatable=False)).kind == "bzImage"


# -- files -----------------------------------------------------------------


def test_input_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        loader.read_input_file(tmp_path / "missing", "kernel")
    with pytest.raises(UserError, match="is a directory"):
        loader.read_input_file(tmp_path, "kernel")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match="file is empty"):
        loader.read_input_file(tmp_path / "empty", "initrd")


def test_devices_are_refused_and_pipes_are_read_up_to_the_limit(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a device"):
        loader.read_input_file("/dev/zero", "initrd")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for size, limit in ((5000, 8192), (9000, 8192)):
        writer = threading.Thread(target=fifo.write_bytes, args=(b"x" * size,))
        writer.start()
        try:
            if size <= limit:
                assert loader.read_input_file(fifo, "initrd", limit) == b"x" * size
            else:
                with pytest.raises(UserError, match="larger than"):
                    loader.read_input_file(fifo, "initrd", limit)
        finally:
            writer.join(timeout=10)


def test_kernel_file_error_names_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x01" * 2000)
    with pytest.raises(KernelFormatError, match=f"kernel {junk}: not a kernel"):
        loader.load_kernel_file(junk)


# -- placement -------------------------------------------------------------


def _kernel(end: int = 0x400000, initrd_addr_max: int = 0x7FFFFFFF, cmdline_max: int = 2047):
    return KernelImage(
        kind="ELF",
        entry=0x200000,
        segments=(Segment(0x200000, b"\x90", end - 0x200000),),
        setup_header=None,
        cmdline_max=cmdline_max,
        initrd_addr_max=initrd_addr_max,
        footprint=end - 0x200000,
    )


def test_initrd_goes_to_the_top_of_low_ram() -> None:
    ram = ram_ranges(128 * MiB)
    assert loader.place_initrd(4096, _kernel(), ram) == 128 * MiB - 4096
    assert loader.place_initrd(5000, _kernel(), ram) == 128 * MiB - 8192  # page-aligned down


def test_initrd_stays_under_initrd_addr_max() -> None:
    ram = ram_ranges(2048 * MiB)
    addr = loader.place_initrd(4096, _kernel(initrd_addr_max=0x37FFFFFF), ram)
    assert addr == 0x38000000 - 4096


def test_initrd_never_goes_above_4g() -> None:
    ram = ram_ranges(8192 * MiB)
    addr = loader.place_initrd(MiB, _kernel(initrd_addr_max=0xFFFFFFFF), ram)
    assert addr == 3072 * MiB - MiB


def test_initrd_too_big() -> None:
    ram = ram_ranges(16 * MiB)
    assert loader.place_initrd(12 * MiB, _kernel(end=4 * MiB), ram) == 4 * MiB
    with pytest.raises(UserError, match="does not fit"):
        loader.place_initrd(12 * MiB + 1, _kernel(end=4 * MiB), ram)
    with pytest.raises(UserError, match="does not fit"):
        loader.place_initrd(64 * MiB, _kernel(), ram)


def test_kernel_larger_than_memory() -> None:
    with pytest.raises(UserError, match=r"needs RAM up to 0x4000000 \(64 MiB\); --memory gives 32"):
        loader.check_kernel_fits(_kernel(end=64 * MiB), ram_ranges(32 * MiB))


def test_cmdline_limit() -> None:
    k = _kernel(cmdline_max=10)
    assert loader.encode_cmdline("x" * 10, k) == b"x" * 10
    with pytest.raises(UserError, match="11 bytes; this kernel accepts at most 10"):
        loader.encode_cmdline("x" * 11, k)
    with pytest.raises(UserError, match="NUL"):
        loader.encode_cmdline("a\0b", k)


def test_cmdline_limit_is_also_the_reserved_area() -> None:
    k = _kernel(cmdline_max=1 << 20)
    with pytest.raises(UserError, match=f"at most {layout.CMDLINE_AREA_SIZE - 1}"):
        loader.encode_cmdline("x" * layout.CMDLINE_AREA_SIZE, k)


# -- loading into memory ---------------------------------------------------


def test_load_elf_into_memory(guests: Guests) -> None:
    image = parse_elf(guests.elf.read_bytes())
    with GuestMemory(ram_ranges(64 * MiB)) as mem:
        bss = image.segments[1]
        mem.fill(bss.addr, bss.mem_size, 0xAA)  # BSS must be zeroed by the loader
        info = loader.load(mem, image, "console=ttyS0", b"initrd-bytes")
        assert mem.read(0x200000, len(image.segments[0].data)) == image.segments[0].data
        assert mem.read(bss.addr, bss.mem_size) == bytes(bss.mem_size)
        assert mem.read(layout.CMDLINE_ADDR, 14) == b"console=ttyS0\0"
        assert mem.read(info.initrd_addr, 12) == b"initrd-bytes"
        assert info.initrd_addr == 64 * MiB - 4096

        zp = ZeroPage()
        zp.buf[:] = mem.read(layout.ZERO_PAGE_ADDR, 4096)
        assert zp["type_of_loader"] == 0xFF
        assert zp["boot_flag"] == 0xAA55 and zp["header"] == 0x53726448
        assert zp["cmd_line_ptr"] == layout.CMDLINE_ADDR
        assert (zp["ramdisk_image"], zp["ramdisk_size"]) == (info.initrd_addr, 12)
        assert zp.e820() == info.e820
        assert info.entry == 0x200200


def test_load_bzimage_copies_the_setup_header() -> None:
    data = make_bzimage(PM, relocatable=True, cmdline_size=300)
    image = parse_bzimage(data)
    with GuestMemory(ram_ranges(64 * MiB)) as mem:
        loader.load(mem, image, "")
        page = mem.read(layout.ZERO_PAGE_ADDR, 4096)
        # The header is copied up to type_of_loader; vid_mode (0x1fa) becomes "normal".
        assert page[0x1F1:0x1FA] == data[0x1F1:0x1FA]
        assert page[0x1FC:0x210] == data[0x1FC:0x210]
        zp = ZeroPage()
        zp.buf[:] = page
        assert zp["type_of_loader"] == 0xFF
        assert zp["code32_start"] == PREF_ADDRESS
        assert zp["cmdline_size"] == 300
        assert zp["vid_mode"] == 0xFFFF
        assert zp["ramdisk_size"] == 0
        assert mem.read(PREF_ADDRESS, len(PM)) == PM
