"""The one place that calls ioctl() on KVM file descriptors.

Requests and structs come from the cffi extension ``pyvmm.kvm._kvm``, built
against the system's <linux/kvm.h>. A failed call raises :class:`KvmError`
naming the request and the errno, so a failure deep in a boot still says
which step of the KVM API refused.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pyvmm.kvm._kvm import ffi, lib

__all__ = ["KvmError", "ffi", "get_struct", "ioctl", "ioctl_val", "lib", "set_struct"]


class KvmError(OSError):
    """An ioctl on a KVM file descriptor failed."""

    def __init__(self, request: str, err: int, detail: str | None = None) -> None:
        name = errno.errorcode.get(err, str(err))
        why = detail if detail is not None else f"{os.strerror(err)} ({name})"
        super().__init__(err, f"{request} failed: {why}")
        self.request = request

    def __str__(self) -> str:
        return str(self.args[1])


def ioctl(fd: int, request: str, arg: Any = ffi.NULL) -> int:
    """ioctl(fd, request, pointer); returns the ioctl's non-negative result."""
    ret = int(lib.pyvmm_ioctl(fd, getattr(lib, request), arg))
    if ret < 0:
        raise KvmError(request, -ret)
    return ret


def ioctl_val(fd: int, request: str, value: int = 0) -> int:
    """ioctl(fd, request, integer) for requests whose argument is a value."""
    ret = int(lib.pyvmm_ioctl_val(fd, getattr(lib, request), value))
    if ret < 0:
        raise KvmError(request, -ret)
    return ret


def get_struct(fd: int, request: str, ctype: str, init: dict[str, int] | None = None) -> bytes:
    """ioctl(fd, request, &struct) for a request that fills a struct; the
    struct's bytes as the kernel's ABI lays them out (for saved state)."""
    obj = ffi.new(f"{ctype} *", init or {})
    ioctl(fd, request, obj)
    return bytes(ffi.buffer(obj))


def set_struct(fd: int, request: str, ctype: str, data: bytes) -> None:
    """ioctl(fd, request, &struct) with a struct given as its bytes; raises
    ValueError when they are not exactly the struct's size."""
    obj = ffi.new(f"{ctype} *")
    buf = ffi.buffer(obj)
    if len(data) != len(buf):
        raise ValueError(f"{ctype} is {len(buf)} bytes, got {len(data)}")
    buf[:] = data
    ioctl(fd, request, obj)
