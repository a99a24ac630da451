"""The I/O thread without KVM: eventfd signals reach their handler on the
thread, none while it is paused, and a handler's bug ends nothing but
itself (it is reported)."""

from __future__ import annotations

import os
import threading
import time

from pyvmm.vmm.io_thread import IoThread


def wait_until(condition: object, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


def test_signals_reach_the_handler_and_not_while_paused() -> None:
    errors: list[BaseException] = []
    io = IoThread(errors.append)
    seen: list[str] = []
    fd = io.eventfd()
    io.add(fd, lambda: seen.append(threading.current_thread().name))
    io.start()
    try:
        os.eventfd_write(fd, 1)
        assert wait_until(lambda: len(seen) == 1)
        assert seen == ["pyvmm-io"]
        io.pause()
        os.eventfd_write(fd, 1)
        time.sleep(0.3)
        assert len(seen) == 1  # parked: the signal waits
        io.resume()
        assert wait_until(lambda: len(seen) == 2)
        for _ in range(100):  # pause and resume leave it working
            io.pause()
            io.resume()
        os.eventfd_write(fd, 1)
        assert wait_until(lambda: len(seen) == 3)
    finally:
        io.close()
    assert errors == [] and io.wakeups == 3


def test_a_failing_handler_is_reported_and_close_still_returns() -> None:
    errors: list[BaseException] = []
    io = IoThread(errors.append)
    fd = io.eventfd()

    def broken() -> None:
        raise RuntimeError("a bug")

    io.add(fd, broken)
    io.start()
    os.eventfd_write(fd, 1)
    assert wait_until(lambda: bool(errors))
    assert str(errors[0]) == "a bug"
    fds = len(os.listdir("/proc/self/fd"))
    io.close()
    assert len(os.listdir("/proc/self/fd")) == fds - 3  # epoll, the wake fd, its own


def test_close_without_start() -> None:
    IoThread(lambda e: None).close()
