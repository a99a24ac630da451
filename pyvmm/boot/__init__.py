"""Loading a kernel: ELF or bzImage, command line, initrd and the zero page."""
