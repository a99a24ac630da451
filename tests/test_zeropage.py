"""The zero page: offsets against <asm/bootparam.h>, field access, E820 table."""

from __future__ import annotations

import subprocess

import pytest

from pyvmm.boot import zeropage
from pyvmm.boot.e820 import E820_RAM, E820_RESERVED, E820Entry
from pyvmm.boot.zeropage import HEADER_FIELDS, SetupHeader, ZeroPage


@pytest.fixture(scope="module")
def header_offsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """offsetof() of every field, as the system's <asm/bootparam.h> lays them out."""
    src = tmp_path_factory.mktemp("bootparam") / "offsets.c"
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <asm/bootparam.h>",
        "int main(void) {",
    ]
    for name in HEADER_FIELDS:
        lines.append(
            f'printf("{name} %zu %zu\\n", offsetof(struct boot_params, hdr.{name}),'
            f" sizeof(((struct boot_params *)0)->hdr.{name}));"
        )
    for name, field in [
        ("ACPI_RSDP_ADDR", "acpi_rsdp_addr"),
        ("EXT_RAMDISK_IMAGE", "ext_ramdisk_image"),
        ("EXT_RAMDISK_SIZE", "ext_ramdisk_size"),
        ("EXT_CMD_LINE_PTR", "ext_cmd_line_ptr"),
        ("E820_ENTRIES", "e820_entries"),
        ("SETUP_HEADER", "hdr"),
        ("E820_TABLE", "e820_table"),
    ]:
        lines.append(f'printf("{name} %zu 0\\n", offsetof(struct boot_params, {field}));')
    lines.append('printf("sizeof_boot_params %zu 0\\n", sizeof(struct boot_params));')
    lines.append('printf("sizeof_e820_entry %zu 0\\n", sizeof(struct boot_e820_entry));')
    lines.append("return 0; }")
    src.write_text("\n".join(lines))
    exe = src.with_suffix("")
    subprocess.run(["gcc", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    result = {}
    for line in out.splitlines():
        name, offset, size = line.split()
        result[name] = int(offset)
        result[name + ".size"] = int(size)
    return result


def test_setup_header_offsets_match_bootparam_h(header_offsets: dict[str, int]) -> None:
    import struct

    for name, (offset, fmt) in HEADER_FIELDS.items():
        assert header_offsets[name] == offset, name
        assert header_offsets[name + ".size"] == struct.calcsize(fmt), name


def test_boot_params_offsets_match_bootparam_h(header_offsets: dict[str, int]) -> None:
    for name in (
        "ACPI_RSDP_ADDR",
        "EXT_RAMDISK_IMAGE",
        "EXT_RAMDISK_SIZE",
        "EXT_CMD_LINE_PTR",
        "E820_ENTRIES",
        "SETUP_HEADER",
        "E820_TABLE",
    ):
        assert header_offsets[name] == getattr(zeropage, name), name
    assert header_offsets["sizeof_boot_params"] == zeropage.ZERO_PAGE_SIZE
    assert header_offsets["sizeof_e820_entry"] == 20


def test_fields_round_trip() -> None:
    zp = ZeroPage()
    zp["type_of_loader"] = 0xFF
    zp["pref_address"] = 0x123456789
    zp["version"] = 0x020F
    assert zp.buf[0x210] == 0xFF
    assert zp.buf[0x206:0x208] == b"\x0f\x02"
    assert zp["pref_address"] == 0x123456789


def test_cmdline_and_initrd_above_4g_use_ext_fields() -> None:
    zp = ZeroPage()
    zp.set_cmdline(0x1_2000_0000)
    zp.set_initrd(0x2_0000_1000, 0x1_0000_0002)
    assert zp["cmd_line_ptr"] == 0x2000_0000
    assert zp.buf[0xC8:0xCC] == (1).to_bytes(4, "little")
    assert zp["ramdisk_image"] == 0x1000
    assert zp.buf[0xC0:0xC4] == (2).to_bytes(4, "little")
    assert zp["ramdisk_size"] == 2
    assert zp.buf[0xC4:0xC8] == (1).to_bytes(4, "little")


def test_acpi_rsdp_address() -> None:
    zp = ZeroPage()
    zp.set_acpi_rsdp(0xE0000)
    assert zp.buf[0x70:0x78] == (0xE0000).to_bytes(8, "little")


def test_e820_table_layout() -> None:
    zp = ZeroPage()
    entries = [E820Entry(0, 0x9FC00, E820_RAM), E820Entry(0x9FC00, 0x400, E820_RESERVED)]
    zp.set_e820(entries)
    assert zp.buf[0x1E8] == 2
    assert zp.buf[0x2D0 + 20 : 0x2D0 + 40] == (
        (0x9FC00).to_bytes(8, "little") + (0x400).to_bytes(8, "little") + (2).to_bytes(4, "little")
    )
    assert zp.e820() == entries


def test_e820_table_has_128_slots() -> None:
    with pytest.raises(ValueError):
        ZeroPage().set_e820([E820Entry(i << 20, 1 << 20, E820_RAM) for i in range(129)])


def test_setup_header_raw_ends_where_the_jump_byte_says() -> None:
    image = bytearray(1024)
    image[0x201] = 0x6A
    image[0x202:0x206] = b"HdrS"
    hdr = SetupHeader.parse(image)
    assert len(hdr.raw) == 0x26C - 0x1F1
    assert hdr.header == zeropage.HDRS_MAGIC
