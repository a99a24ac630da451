"""Build the freestanding test guests with gcc.

    python tests/guests/build.py OUTDIR

writes OUTDIR/guest.elf (a 64-bit ELF linked at 2 MiB) and bzImages that
wrap the same position-independent code as their protected-mode part:
OUTDIR/guest.bzImage (relocatable, pref_address 16 MiB) and
OUTDIR/guest-fixed.bzImage (not relocatable: loaded at 1 MiB).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pyvmm.boot.zeropage import (
    BOOT_FLAG,
    HDRS_MAGIC,
    LOADED_HIGH,
    XLF_KERNEL_64,
    put_field,
)

HERE = Path(__file__).resolve().parent

CFLAGS = [
    "-O2",
    "-Wall",
    "-Werror",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-fpie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
]
LDFLAGS = ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-z,noexecstack"]

#: Where a relocatable test bzImage asks to be loaded.
PREF_ADDRESS = 0x1000000
SETUP_SECTS = 1
#: Memory the guest needs from its load address: code, data, BSS, stack.
INIT_SIZE = 0x40000


@dataclass(frozen=True)
class Guests:
    elf: Path
    bzimage: Path
    bzimage_fixed: Path


def make_bzimage(
    protected_mode: bytes,
    *,
    relocatable: bool,
    pref_address: int = PREF_ADDRESS,
    version: int = 0x020F,
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFFFFFF,
    xloadflags: int = XLF_KERNEL_64,
) -> bytes:
    """A bzImage: a setup area holding the boot header, then the protected-mode code."""
    setup = bytearray((SETUP_SECTS + 1) * 512)
    header_end = 0x26C  # end of the 2.15 setup header
    setup[0x200] = 0xEB  # "jmp short" over the header, as a real setup sector has
    setup[0x201] = header_end - 0x202  # header length is read from this byte
    pm = protected_mode + b"\0" * (-len(protected_mode) % 16)
    fields = {
        "setup_sects": SETUP_SECTS,
        "syssize": len(pm) // 16,
        "boot_flag": BOOT_FLAG,
        "header": HDRS_MAGIC,
        "version": version,
        "loadflags": LOADED_HIGH,
        "code32_start": 0x100000,
        "initrd_addr_max": initrd_addr_max,
        "kernel_alignment": 0x200000,
        "relocatable_kernel": int(relocatable),
        "xloadflags": xloadflags,
        "cmdline_size": cmdline_size,
        "pref_address": pref_address,
        "init_size": max(INIT_SIZE, len(pm)),
    }
    for name, value in fields.items():
        put_field(setup, name, value)
    return bytes(setup) + pm


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def build(outdir: Path) -> Guests:
    outdir.mkdir(parents=True, exist_ok=True)
    objs = []
    for src in ("entry.S", "guest.c", "virtio.c"):
        obj = outdir / (Path(src).stem + ".o")
        _run(["gcc", *CFLAGS, "-c", str(HERE / src), "-o", str(obj)])
        objs.append(str(obj))
    elf = outdir / "guest.elf"
    _run(["gcc", *LDFLAGS, "-Wl,-T," + str(HERE / "guest.ld"), *objs, "-o", str(elf)])

    sections = subprocess.run(
        ["readelf", "-SW", str(elf)], capture_output=True, text=True, check=True
    ).stdout
    if ".got" in sections or ".rela" in sections:
        raise RuntimeError("test guest needs relocations; it must be position-independent")

    flat = outdir / "guest.bin"
    _run(
        [
            "objcopy",
            "-O",
            "binary",
            "--only-section=.text",
            "--only-section=.data",
            str(elf),
            str(flat),
        ]
    )
    code = flat.read_bytes()
    bz = outdir / "guest.bzImage"
    bz.write_bytes(make_bzimage(code, relocatable=True))
    bz_fixed = outdir / "guest-fixed.bzImage"
    bz_fixed.write_bytes(make_bzimage(code, relocatable=False))
    return Guests(elf=elf, bzimage=bz, bzimage_fixed=bz_fixed)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    guests = build(Path(sys.argv[1]))
    for path in (guests.elf, guests.bzimage, guests.bzimage_fixed):
        print(path)
