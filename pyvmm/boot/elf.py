"""Loading a 64-bit x86 ELF kernel (vmlinux) with pyelftools.

Each PT_LOAD segment goes to its physical address (p_paddr), and the vCPU
starts at e_entry, which for x86-64 vmlinux is a physical address
(arch/x86/kernel/vmlinux.lds.S: ENTRY(phys_startup_64)).
"""

from __future__ import annotations

import io

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyvmm.boot import layout
from pyvmm.boot.image import KernelFormatError, KernelImage, Segment

ELF_MAGIC = b"\x7fELF"

#: Linux's x86 COMMAND_LINE_SIZE minus the NUL; an ELF has no header to say otherwise.
ELF_CMDLINE_MAX = 2047
#: Highest initrd byte for an ELF kernel: what x86-64 Linux's own header advertises.
ELF_INITRD_ADDR_MAX = 0x7FFFFFFF


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes) -> KernelImage:
    """Parse an ELF kernel; raises KernelFormatError saying what is wrong."""
    try:
        elf = ELFFile(io.BytesIO(data))
        elfclass = elf.elfclass
        machine = elf["e_machine"]
        etype = elf["e_type"]
        entry = elf["e_entry"]
        headers = [elf.get_segment(i).header for i in range(elf.num_segments())]
    except (ELFError, ValueError, KeyError, EOFError, OSError) as e:
        raise KernelFormatError(f"not a valid ELF file: {e}") from None
    except Exception as e:  # pyelftools reports truncation with assorted errors
        raise KernelFormatError(f"not a valid ELF file ({type(e).__name__}: {e})") from None

    if elfclass != 64:
        raise KernelFormatError(f"ELF is {elfclass}-bit; pyvmm boots 64-bit x86-64 kernels")
    if machine != "EM_X86_64":
        raise KernelFormatError(f"ELF is for {machine}, not x86-64 (EM_X86_64)")
    if etype != "ET_EXEC":
        raise KernelFormatError(f"ELF type is {etype}; a kernel is an executable (ET_EXEC)")

    segments = []
    for h in headers:
        if h["p_type"] != "PT_LOAD" or h["p_memsz"] == 0:
            continue
        offset, filesz, memsz, paddr = h["p_offset"], h["p_filesz"], h["p_memsz"], h["p_paddr"]
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
