"""x86-64 vCPU state for the Linux 64-bit boot protocol: GDT, page tables,
registers, MSRs, CPUID and the local APIC."""
