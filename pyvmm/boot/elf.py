"""Loading a 64-bit x86 ELF kernel (vmlinux).

Each PT_LOAD segment goes to its physical address (p_paddr), and the vCPU
starts at e_entry, which for x86-64 vmlinux is a physical address
(arch/x86/kernel/vmlinux.lds.S: ENTRY(phys_startup_64)).

Only the file header and the program headers matter for booting, so they
are read here with ``struct``, at the offsets the System V ABI gives
("ELF-64 Object File Format": Elf64_Ehdr is 64 bytes, each Elf64_Phdr 56).
``pyvmm inspect`` uses pyelftools for its fuller report.
"""

from __future__ import annotations

import struct

from pyvmm.arch.x86_64 import layout
from pyvmm.boot.image import KernelFormatError, KernelImage, Segment

ELF_MAGIC = b"\x7fELF"

#: Linux's x86 COMMAND_LINE_SIZE minus the NUL; an ELF has no header to say otherwise.
ELF_CMDLINE_MAX = 2047
#: Highest initrd byte for an ELF kernel: what x86-64 Linux's own header advertises.
ELF_INITRD_ADDR_MAX = 0x7FFFFFFF

# e_ident bytes and the values pyvmm accepts.
EI_CLASS, EI_DATA = 4, 5
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
#: Elf64_Ehdr after e_ident: e_type, e_machine, e_version, e_entry, e_phoff,
#: e_shoff, e_flags, e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum,
#: e_shstrndx.
EHDR = struct.Struct("<HHIQQQIHHHHHH")
EHDR_SIZE = 16 + EHDR.size
#: Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align.
PHDR = struct.Struct("<IIQQQQQQ")
#: Machine names for messages (the gABI's EM_* values).
MACHINES = {3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390",
            40: "EM_ARM", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV"}  # fmt: skip
TYPES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes) -> KernelImage:
    """Parse an ELF kernel; raises KernelFormatError saying what is wrong."""
    if len(data) < EI_DATA + 1 or not is_elf(data):
        raise KernelFormatError("not a valid ELF file: the header is incomplete")
    if data[EI_CLASS] == ELFCLASS32:
        raise KernelFormatError("ELF is 32-bit; pyvmm boots 64-bit x86-64 kernels")
    if data[EI_CLASS] != ELFCLASS64 or data[EI_DATA] != ELFDATA2LSB:
        raise KernelFormatError("not a valid ELF file: not a little-endian 64-bit ELF")
    if len(data) < EHDR_SIZE:
        raise KernelFormatError("not a valid ELF file: the header is incomplete")
    etype, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_ = EHDR.unpack_from(data, 16)
    if machine != EM_X86_64:
        name = MACHINES.get(machine, f"e_machine {machine}")
        raise KernelFormatError(f"ELF is for {name}, not x86-64 (EM_X86_64)")
    if etype != ET_EXEC:
        name = TYPES.get(etype, f"e_type {etype}")
        raise KernelFormatError(f"ELF type is {name}; a kernel is an executable (ET_EXEC)")
    if phnum and phentsize < PHDR.size:
        raise KernelFormatError(f"not a valid ELF file: program headers of {phentsize} bytes")
    if phoff + phnum * phentsize > len(data):
        raise KernelFormatError("not a valid ELF file: the program headers are past its end")

    segments = []
    for i in range(phnum):
        ptype, _, offset, _, paddr, filesz, memsz, _ = PHDR.unpack_from(data, phoff + i * phentsize)
        if ptype != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise KernelFormatError(f"ELF segment at {paddr:#x} has p_filesz > p_memsz")
        if offset + filesz > len(data):
            raise KernelFormatError(
                f"ELF is truncated: segment at {paddr:#x} needs file bytes up to "
                f"{offset + filesz:#x}, the file has {len(data):#x}"
            )
        if paddr < layout.HIMEM_START:
            raise KernelFormatError(
                f"ELF segment at {paddr:#x} is below 1 MiB, where pyvmm keeps boot structures"
            )
        segments.append(Segment(paddr, data[offset : offset + filesz], memsz))
    if not segments:
        raise KernelFormatError("ELF has no loadable (PT_LOAD) segments")
    if not any(s.addr <= entry < s.end for s in segments):
        raise KernelFormatError(f"ELF entry point {entry:#x} is not inside a loadable segment")

    start = min(s.addr for s in segments)
    return KernelImage(
        kind="ELF",
        entry=entry,
        segments=tuple(sorted(segments, key=lambda s: s.addr)),
        setup_header=None,
        cmdline_max=ELF_CMDLINE_MAX,
        initrd_addr_max=ELF_INITRD_ADDR_MAX,
        footprint=max(s.end for s in segments) - start,
    )
