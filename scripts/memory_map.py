"""Draw the guest-physical memory map as an SVG, from pyvmm.arch.x86_64.layout.

    python scripts/memory_map.py [docs/memory-map.svg]

One row per region, lowest address at the bottom, as memory maps are
usually drawn. Rows are not to scale: the map spans 0x500 bytes to 4 GiB.
tests/test_docs.py checks that the committed picture matches this script.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyvmm.arch.x86_64 import layout as L  # noqa: E402

#: (start, end or None for "up to the next row", label, kind) from low to high.
REGIONS = [
    (0, L.GDT_ADDR, "real-mode IVT and BIOS data (unused, RAM)", "ram"),
    (L.GDT_ADDR, L.IDT_ADDR, "boot GDT: __BOOT_CS 0x10, __BOOT_DS 0x18, TSS 0x20", "pyvmm"),
    (L.IDT_ADDR, None, "boot IDT (limit 0: empty)", "pyvmm"),
    (L.ZERO_PAGE_ADDR, L.ZERO_PAGE_ADDR + 0x1000, "zero page (boot_params): RSI at entry", "pyvmm"),
    (L.ZERO_PAGE_ADDR + 0x1000, L.PML4_ADDR, "boot stack (RSP 0x8ff0, grows down)", "pyvmm"),
    (L.PML4_ADDR, L.PDPT_ADDR, "PML4: CR3 at entry", "pyvmm"),
    (L.PDPT_ADDR, L.PD_ADDR, "PDPT", "pyvmm"),
    (L.PD_ADDR, L.PD_ADDR + 0x4000, "4 page directories: 2 MiB pages, 0-4 GiB identity", "pyvmm"),
    (L.CMDLINE_ADDR, L.CMDLINE_ADDR + L.CMDLINE_AREA_SIZE, "kernel command line", "pyvmm"),
    (L.EBDA_START, L.EBDA_END, "EBDA (reserved in E820)", "reserved"),
    (L.EBDA_END, L.BIOS_START, "VGA and option ROM hole (not in E820)", "hole"),
    (L.ACPI_TABLES_ADDR, L.HIMEM_START, "ACPI tables from 0xe0000, RSDP first (reserved)", "pyvmm"),
    (L.HIMEM_START, None, "kernel: bzImage at 1 MiB or its pref_address, ELF at p_paddr", "kernel"),
    (None, L.MMIO_GAP_START, "initrd: as high as initrd_addr_max and RAM allow", "kernel"),
    (L.MMIO_GAP_START, L.MMIO_WINDOW_START, "32-bit MMIO gap: reads all-ones, no RAM", "hole"),
    (L.MMIO_WINDOW_START, L.MMIO_WINDOW_END, "MMIO device window: a page per device", "device"),
    (L.MMIO_WINDOW_END, L.IOAPIC_ADDR, "rest of the MMIO gap: reads all-ones", "hole"),
    (L.IOAPIC_ADDR, L.IOAPIC_ADDR + 0x1000, "I/O APIC (in KVM)", "kvm"),
    (L.LAPIC_ADDR, L.LAPIC_ADDR + 0x1000, "local APIC (in KVM)", "kvm"),
    (L.IDENTITY_MAP_ADDR, L.TSS_ADDR + 0x3000, "KVM's identity-map and TSS pages (VMX)", "kvm"),
    (L.MMIO_GAP_END, None, "RAM beyond the first 3 GiB, when --memory is larger", "ram"),
]  # fmt: skip

COLOURS = {
    "ram": "#e8f0e0",
    "pyvmm": "#cfe2f3",
    "reserved": "#f4cccc",
    "hole": "#eeeeee",
    "kernel": "#fff2cc",
    "kvm": "#d9d2e9",
    "device": "#fce5cd",
}
ROW, WIDTH, BAR_X, BAR_W = 26, 760, 170, 580


def svg() -> str:
    rows = len(REGIONS)
    height = rows * ROW + 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="monospace" font-size="12">',
        f'<text x="{BAR_X}" y="20" font-size="14">pyvmm guest-physical memory '
        "(not to scale; from pyvmm/arch/x86_64/layout.py)</text>",
    ]
    for i, (start, end, label, kind) in enumerate(REGIONS):
        y = 30 + (rows - 1 - i) * ROW  # lowest address at the bottom
        parts.append(
            f'<rect x="{BAR_X}" y="{y}" width="{BAR_W}" height="{ROW}" '
            f'fill="{COLOURS[kind]}" stroke="#555"/>'
        )
        parts.append(f'<text x="{BAR_X + 8}" y="{y + 17}">{escape(label)}</text>')
        start_text = f"{start:#x}" if start is not None else "..."
        end_text = f"-{end - 1:#x}" if end is not None else ""
        parts.append(
            f'<text x="{BAR_X - 8}" y="{y + 17}" text-anchor="end">{start_text}{end_text}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "memory-map.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg())
    print(out)


if __name__ == "__main__":
    main()
