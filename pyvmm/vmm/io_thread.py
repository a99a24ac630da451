"""The I/O thread: device work that arrives by eventfd, off the vCPUs.

A virtio driver notifies a queue by writing its index to QueueNotify. With
KVM_IOEVENTFD (datamatch on the index) KVM turns that write into a signal
on an eventfd without leaving the guest: the vCPU goes straight on, and
this thread, waiting on all such eventfds with epoll, serves the queue.
The device's interrupt goes back through KVM_IRQFD: writing to another
eventfd raises the GSI inside KVM (:func:`irqfd_pulse`).

Like a vCPU, the thread pauses (:meth:`IoThread.pause` returns once it is
parked between two pieces of work, so a snapshot sees every device at
rest) and stops.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

#: How long pause() waits for the thread to park, in seconds.
PAUSE_TIMEOUT = 10.0


class IoThread:
    """Runs ``handler()`` whenever its eventfd is signalled; ``failed`` gets
    an exception a handler raised (pyvmm's own bug: the VM ends)."""

    def __init__(self, failed: Callable[[BaseException], None]) -> None:
        self._failed = failed
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._raw: set[int] = set()  # descriptors that are not eventfds
        self._ignored: set[int] = set()  # not waited on for now (watch)
        #: Owned eventfds, closed with the thread.
        self._fds: list[int] = []
        self._wake = self.eventfd()
        self._epoll.register(self._wake, select.EPOLLIN)  # pause and stop wake the thread
        self._stopping = False
        self._pause_wanted = False
        self._parked = threading.Event()
        self._go_on = threading.Event()
        self._thread: threading.Thread | None = None
        #: Eventfd signals served, for --stats.
        self.wakeups = 0

    def eventfd(self) -> int:
        """A new non-blocking eventfd this thread owns (closed in :meth:`close`)."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(fd)
        return fd

    def add(self, fd: int, handler: Callable[[], None], eventfd: bool = True) -> None:
        """Call ``handler`` each time ``fd`` is signalled (an eventfd, read
        here) or readable (any other descriptor: the handler reads it)."""
        self._handlers[fd] = handler
        if not eventfd:
            self._raw.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def watch(self, fd: int, on: bool) -> None:
        """Wait on ``fd`` again (or not, while its handler has nowhere to
        put what it would read). From any thread."""
        if fd in self._handlers and on != (fd not in self._ignored):
            if on:
                self._ignored.discard(fd)
            else:
                self._ignored.add(fd)
            self._epoll.modify(fd, select.EPOLLIN if on else 0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pyvmm-io", daemon=True)
        self._thread.start()

    def _signal(self) -> None:
        os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        while not self._stopping:
            if self._pause_wanted:
                self._parked.set()
                self._go_on.wait()
                self._parked.clear()
                continue
            for fd, _ in self._epoll.poll():
                if fd not in self._raw:
                    try:
                        os.eventfd_read(fd)
                    except BlockingIOError:
                        continue
                handler = self._handlers.get(fd)
                if handler is None:
                    continue
                self.wakeups += 1
                try:
                    handler()
                except Exception as e:  # a pyvmm bug: end the VM, keep the thread's word
                    self._failed(e)
                    return

    def pause(self) -> None:
        """Return once the thread is parked between two handlers."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._go_on.clear()
        self._pause_wanted = True
        self._signal()
        if not self._parked.wait(PAUSE_TIMEOUT):
            raise TimeoutError(f"the I/O thread did not pause in {PAUSE_TIMEOUT} s")

    def resume(self) -> None:
        self._pause_wanted = False
        self._go_on.set()

    def stop(self) -> None:
        """End the thread and wait for it."""
        self._stopping = True
        self._go_on.set()
        self._signal()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(PAUSE_TIMEOUT)  # a handler stuck in a host call: never forever

    def close(self) -> None:
        """Stop, then close the eventfds (KVM must be done with them: close
        the VM first, or deassign them)."""
        self.stop()
        self._epoll.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def irqfd_pulse(fd: int) -> Callable[[], None]:
    """An edge on the GSI that eventfd ``fd`` is KVM_IRQFD-bound to: KVM
    raises and lowers the line itself."""

    def pulse() -> None:
        os.eventfd_write(fd, 1)

    return pulse
