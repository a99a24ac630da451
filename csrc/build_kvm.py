"""cffi builder for ``pyvmm.kvm._kvm`` (API mode).

The declarations in kvm_cdef.h are checked by the C compiler against the
system's <linux/kvm.h>, so struct layouts and ioctl numbers always match the
headers the extension is built with.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "kvm_cdef.h").read_text())
ffibuilder.cdef((HERE / "kvm_helpers.h").read_text())
ffibuilder.set_source(
    "pyvmm.kvm._kvm",
    """
    #define _GNU_SOURCE  /* fallocate and its FALLOC_FL_* flags */
    #include <fcntl.h>
    #include <linux/kvm.h>
    #include <sys/file.h>
    #include <sys/mman.h>
    #include "kvm_helpers.h"
    """,
    # setuptools wants source paths relative to the project root, where
    # setup.py runs this builder.
    sources=["csrc/kvm_helpers.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
