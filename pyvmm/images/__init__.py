"""Guest images built from Debian packages: the stock kernel, a small kernel
built from source, and a busybox initramfs. Nothing here is committed to the
repository; everything is built into a cache directory on first use."""

#: The default guests ``pyvmm run --guest`` chooses from.
GUEST_KINDS = ("auto", "stock", "small")
