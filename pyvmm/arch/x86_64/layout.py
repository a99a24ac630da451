"""Every fixed guest-physical address pyvmm uses, in ascending order, and
the interrupt lines devices may take.

The first megabyte follows the PC convention Linux expects (real-mode
structures low, EBDA just under 640 KiB, BIOS area up to 1 MiB); the boot
structures pyvmm builds itself live in otherwise unused low pages. The
Linux boot protocol (Documentation/arch/x86/boot.rst) only requires that the
zero page, command line and kernel be identity-mapped at the 64-bit entry.
"""

from pyvmm.memory import Range

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: Boot GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), 16-byte TSS (0x20).
GDT_ADDR = 0x500
#: Boot IDT: empty (limit 0); the kernel installs its own before enabling interrupts.
IDT_ADDR = 0x540
#: struct boot_params, "the zero page" (4 KiB); RSI points here at the 64-bit entry.
ZERO_PAGE_ADDR = 0x7000
#: Initial stack pointer; the stack grows down into the page at 0x8000.
BOOT_STACK_TOP = 0x8FF0
#: Page-map level 4 table of the boot identity map.
PML4_ADDR = 0x9000
#: Page-directory-pointer table: its first 4 entries cover 4 GiB.
PDPT_ADDR = 0xA000
#: Four page directories of 2 MiB pages (0xB000-0xEFFF), identity-mapping 0-4 GiB.
PD_ADDR = 0xB000
#: Kernel command line, NUL-terminated.
CMDLINE_ADDR = 0x20000
#: Room reserved for the command line (up to 0x30000).
CMDLINE_AREA_SIZE = 0x10000
#: Extended BIOS data area: low RAM ends here (640 KiB minus 1 KiB).
EBDA_START = 0x9FC00
#: End of the EBDA; 0xA0000-0xFFFFF is the legacy VGA/ROM hole.
EBDA_END = 0xA0000
#: Extended and system BIOS area, reserved in E820 up to 1 MiB. The ACPI
#: tables start here, RSDP first, where a guest that is not handed the RSDP's
#: address looks for it (0xE0000-0xFFFFF, ACPI 6.5 section 5.2.5.1).
BIOS_START = 0xE0000
#: ACPI tables: RSDP, DSDT, FADT, MADT, XSDT (a few hundred bytes).
ACPI_TABLES_ADDR = 0xE0000
#: First byte above the legacy hole; bzImage protected-mode code loads here by default.
HIMEM_START = 0x100000
#: Start of the 32-bit MMIO gap: RAM beyond this much is placed above 4 GiB.
MMIO_GAP_START = 3 * GiB
#: The MMIO device window: the device manager hands out ranges from here,
#: one page per device (a virtio-mmio register block is 0x100 bytes and
#: Linux maps whole pages). 16 MiB holds 4096 devices; the rest of the gap
#: up to the I/O APIC stays empty, reading all-ones.
MMIO_WINDOW_START = 0xD0000000
MMIO_WINDOW_SIZE = 16 * MiB
MMIO_WINDOW_END = MMIO_WINDOW_START + MMIO_WINDOW_SIZE
#: Bytes of the window each device gets.
MMIO_DEVICE_SIZE = 0x1000
#: I/O APIC registers: where KVM's in-kernel I/O APIC sits (its fixed default
#: base, the PC convention), as the MADT tells the guest.
IOAPIC_ADDR = 0xFEC00000
#: Local APIC registers: the architectural default base (SDM Vol. 3A, 11.4.1).
LAPIC_ADDR = 0xFEE00000
#: VMX real-mode identity-map page (KVM_SET_IDENTITY_MAP_ADDR), in the gap.
IDENTITY_MAP_ADDR = 0xFFFBC000
#: Three pages for VMX's real-mode TSS (KVM_SET_TSS_ADDR), in the gap.
TSS_ADDR = 0xFFFBD000
#: End of the 32-bit MMIO gap; RAM continues here.
MMIO_GAP_END = 4 * GiB

# -- interrupt lines ------------------------------------------------------------
#
# KVM's in-kernel I/O APIC has 24 inputs; GSI n is input n. GSIs 0-15 are the
# ISA interrupts, wired to the PIC pair as well (the UART's 4, the RTC's 8);
# the device manager gives GSIs 16-23, which only the I/O APIC sees, to
# devices that declare an interrupt without a fixed ISA number.
IOAPIC_PINS = 24
GSI_ALLOC_FIRST = 16
GSI_ALLOC_LAST = IOAPIC_PINS - 1


def ram_ranges(
    size: int, gap_start: int = MMIO_GAP_START, gap_end: int = MMIO_GAP_END
) -> list[Range]:
    """Guest RAM of ``size`` bytes, split around the 32-bit MMIO gap."""
    if size <= gap_start:
        return [Range(0, size)]
    return [Range(0, gap_start), Range(gap_end, size - gap_start)]
