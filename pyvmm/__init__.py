"""pyvmm: a small virtual machine monitor for Linux KVM."""

__version__ = "0.1.0"
