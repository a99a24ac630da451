"""vCPU registers at the Linux 64-bit entry point.

boot.rst, "64-bit Boot Protocol": long mode with paging, the zero page,
command line and kernel identity-mapped, a GDT with __BOOT_CS/__BOOT_DS,
interrupts disabled, %rsi = address of struct boot_params.
"""

from __future__ import annotations

from typing import Any

from pyvmm.arch.x86_64 import gdt, layout
from pyvmm.arch.x86_64.paging import identity_map
from pyvmm.kvm import Vcpu
from pyvmm.memory import GuestMemory

# Control-register and EFER bits: Intel SDM Vol. 3A, 2.5 and 2.2.1.
CR0_PE = 1 << 0  # protected mode
CR0_ET = 1 << 4  # extension type (hard-wired to 1 on modern CPUs)
CR0_PG = 1 << 31  # paging
CR4_PAE = 1 << 5  # physical address extension, required for long mode
CR4_LA57 = 1 << 12  # 5-level paging
EFER_LME = 1 << 8  # long mode enable
EFER_LMA = 1 << 10  # long mode active

RFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1
RFLAGS_IF = 1 << 9
RFLAGS_AC = 1 << 18  # alignment check / SMAP override, set by STAC and cleared by CLAC

# x87 and SSE state after FNINIT / reset (SDM Vol. 1, 8.1.5 and 10.2.3.1).
FPU_CONTROL_WORD = 0x37F
MXCSR_DEFAULT = 0x1F80


def write_boot_tables(memory: GuestMemory) -> None:
    """The GDT, an empty IDT and the identity-mapped page tables."""
    memory.write(layout.GDT_ADDR, gdt.gdt_bytes())
    memory.fill(layout.IDT_ADDR, 8)
    for addr, table in identity_map().items():
        memory.write(addr, table)


def long_mode_sregs(sregs: Any) -> None:
    """Segment, descriptor-table and control registers for 64-bit mode."""
    gdt.CODE64.load(sregs.cs, gdt.BOOT_CS)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        gdt.DATA.load(seg, gdt.BOOT_DS)
    gdt.TSS.load(sregs.tr, gdt.BOOT_TSS)
    sregs.gdt.base = layout.GDT_ADDR
    sregs.gdt.limit = len(gdt.gdt_bytes()) - 1
    sregs.idt.base = layout.IDT_ADDR
    sregs.idt.limit = 0
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
    sregs.cr3 = layout.PML4_ADDR
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA


def setup_boot_cpu(vcpu: Vcpu, entry: int, zero_page: int) -> None:
    """Put the boot vCPU at ``entry`` in long mode with RSI = ``zero_page``."""
    sregs = vcpu.get_sregs()
    long_mode_sregs(sregs)
    vcpu.set_sregs(sregs)

    regs = vcpu.get_regs()
    for name in (
        "rax",
        "rbx",
        "rcx",
        "rdx",
        "rdi",
        "rbp",
        "r8",
        "r9",
        "r10",
        "r11",
        "r12",
        "r13",
        "r14",
        "r15",
    ):
        setattr(regs, name, 0)
    regs.rip = entry
    regs.rsi = zero_page
    regs.rsp = layout.BOOT_STACK_TOP
    regs.rflags = RFLAGS_RESERVED  # IF clear: the kernel enters with interrupts off
    vcpu.set_regs(regs)

    fpu = vcpu.get_fpu()
    fpu.fcw = FPU_CONTROL_WORD
    fpu.mxcsr = MXCSR_DEFAULT
    vcpu.set_fpu(fpu)


def format_registers(regs: Any, sregs: Any) -> str:
    """A register dump for error reports."""
    gprs = [
        ("rax", regs.rax),
        ("rbx", regs.rbx),
        ("rcx", regs.rcx),
        ("rdx", regs.rdx),
        ("rsi", regs.rsi),
        ("rdi", regs.rdi),
        ("rsp", regs.rsp),
        ("rbp", regs.rbp),
        ("r8", regs.r8),
        ("r9", regs.r9),
        ("r10", regs.r10),
        ("r11", regs.r11),
        ("r12", regs.r12),
        ("r13", regs.r13),
        ("r14", regs.r14),
        ("r15", regs.r15),
        ("rip", regs.rip),
        ("rflags", regs.rflags),
        ("cr0", sregs.cr0),
        ("cr2", sregs.cr2),
        ("cr3", sregs.cr3),
        ("cr4", sregs.cr4),
        ("efer", sregs.efer),
        ("apic_base", sregs.apic_base),
    ]
    lines = []
    for i in range(0, len(gprs), 4):
        lines.append("  ".join(f"{n:>6}={v:016x}" for n, v in gprs[i : i + 4]))
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        s = getattr(sregs, name)
        lines.append(
            f"{name:>6}: sel={s.selector:04x} base={s.base:016x} limit={s.limit:08x} "
            f"type={s.type:x} p={s.present} dpl={s.dpl} db={s.db} s={s.s} l={s.l} g={s.g}"
        )
    lines.append(f"   gdt: base={sregs.gdt.base:016x} limit={sregs.gdt.limit:04x}")
    lines.append(f"   idt: base={sregs.idt.base:016x} limit={sregs.idt.limit:04x}")
    return "\n".join(lines)
