"""Device models behind the I/O and MMIO buses, one module per device."""
