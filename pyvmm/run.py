"""What ``pyvmm run`` does: build the machine (boot a kernel, or restore a
snapshot), wire its console, run it to its end, and give everything back
however it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pyvmm.console import backends
from pyvmm.console.session import ConsoleSession, stdin_fd
from pyvmm.console.terminal import HELP, QUIT, SHOW_HELP, SNAPSHOT
from pyvmm.snapshot_trigger import SnapshotPlan
from pyvmm.vmm import builder
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.lifecycle import Vmm

#: Signals that end the VM, and how.
SIGNAL_ENDINGS = {
    signal.SIGTERM: Outcome(Ending.TERMINATED, "terminated (SIGTERM)"),
    signal.SIGHUP: Outcome(Ending.HANGUP, "hung up (SIGHUP)"),
}


def _ender(
    stop: Callable[[Outcome], None], outcome: Outcome
) -> Callable[[int, FrameType | None], None]:
    """A signal handler that ends the VM with ``outcome``."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop(outcome)

    return handle


def _stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(text)
        sys.stderr.flush()


@dataclass(frozen=True)
class Restore:
    """``--restore DIR``, with what the command line asked for besides."""

    path: Path
    memory: int | None = None
    cpus: int | None = None
    kernel: str | None = None
    #: Changes to the host's side of the devices (see build_from_snapshot).
    adjust: Callable[[MachineConfig], None] | None = None
    #: Whoever restores sets the guest's clock itself: no hint about it.
    sets_clock: bool = False


@dataclass(frozen=True)
class Incoming:
    """``--incoming ADDR``: wait there for a guest instead of booting."""

    address: str
    memory: int | None = None
    cpus: int | None = None


#: How often the main thread wakes while the VM runs (see _wait_for_signals).
SIGNAL_POLL_SECONDS = 0.2


def _wait_for_signals(vmm: Vmm, timeout: float | None = None) -> Outcome:
    """Wait for the VM to end, waking now and then: the kernel may hand
    SIGTERM to any thread, and Python runs its handler only once the main
    thread runs again, which a wait without end would never do. After
    ``timeout`` seconds the VM ends as TIMEOUT."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (ended := vmm.wait(SIGNAL_POLL_SECONDS)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            vmm.stop(Outcome(Ending.TIMEOUT, f"the guest did not finish within {timeout:g} s"))
            deadline = None
    return ended


def _build(
    config: MachineConfig,
    restore: Restore | None,
    incoming: Incoming | None,
    session: ConsoleSession,
) -> tuple[Vmm, Callable[[], None]]:
    """The machine, and what to call once it runs (the migration's answer)."""
    if incoming is not None:
        from pyvmm.migration import protocol, receive

        address = protocol.parse_address(incoming.address)
        received = receive.receive(
            address, session.port(), _stderr, incoming.memory, incoming.cpus,
            config.trace, config.stats, config.debug,
            on_listening=lambda: _stderr(f"pyvmm: waiting for a guest at {address}\n"),
        )  # fmt: skip
        return received.vmm, received.resumed
    if restore is None:
        return builder.build_for_boot(config, session.port(), _stderr), lambda: None
    from pyvmm.snapshot import restore as restoring
    from pyvmm.snapshot.format import SnapshotError

    vmm = restoring.build_from_snapshot(
        restore.path, session.port(), _stderr, restore.memory, restore.cpus,
        config.trace, config.stats, config.debug, restore.adjust,
    )  # fmt: skip
    if (
        restore.kernel is not None
        and Path(restore.kernel).resolve() != Path(vmm.config.kernel).resolve()
    ):
        vmm.close()
        raise SnapshotError(f"snapshot {restore.path} was taken with kernel {vmm.config.kernel}")
    if vmm.clock_behind_ns and not restore.sets_clock:
        _stderr(
            f"pyvmm: the guest's clock resumes where the snapshot stopped it, "
            f"{vmm.clock_behind_ns / 1e9:.0f} s behind; 'hwclock -s' in the guest sets it "
            "from its RTC\n"
        )
    return vmm, lambda: None


def run_machine(
    config: MachineConfig,
    spec: backends.ConsoleSpec | None = None,
    log: Path | None = None,
    append_log: bool = False,
    restore: Restore | None = None,
    snapshot: SnapshotPlan | None = None,
    incoming: Incoming | None = None,
    control: Path | None = None,
    on_console: Callable[[bytes], None] | None = None,
    timeout: float | None = None,
) -> Outcome:
    """Boot the guest (or resume the snapshot ``restore``) with its console
    where ``spec`` says (standard input and output by default), run it to
    the end, and put the terminal back however that end comes.
    ``on_console`` sees everything the guest prints on it; after
    ``timeout`` seconds the VM ends (TIMEOUT)."""
    spec = spec or backends.ConsoleSpec("stdio")
    session = ConsoleSession()
    saved_signals: dict[signal.Signals, Any] = {}
    vmm = None
    snapshotter = None
    closers: list[Callable[[], None]] = []
    try:
        # Bad input (the kernel, the initrd, sizes, the snapshot) is found
        # here, before any console file or socket is created.
        vmm, running = _build(config, restore, incoming, session)
        config = vmm.config
        if snapshot is not None:
            from pyvmm.snapshot_trigger import Snapshotter

            snapshotter = Snapshotter(vmm, snapshot, _stderr)
            session.add_listener(snapshotter.console)
        if on_console is not None:
            session.add_listener(on_console)
        com1 = vmm.com1
        assert com1 is not None
        session.attach(com1, com1.tx_ready)
        protect = tuple(Path(p) for p in (config.kernel, config.initrd) if p is not None)
        if spec.kind == "stdio":
            stopping = vmm.stop
            session.add_stdout(
                lambda: stopping(Outcome(Ending.HANGUP, "standard output was closed"))
            )
        elif spec.kind == "stderr":  # pyvmm run --verbose -- CMD
            session.add_stdout(lambda: None, fd=2)
        elif spec.kind == "file":
            assert spec.path is not None
            session.add_file(spec.path, append_log, protect)
        if log is not None:
            session.add_file(log, append_log, protect)
        for sig, ending in SIGNAL_ENDINGS.items():
            saved_signals[sig] = signal.getsignal(sig)
            signal.signal(sig, _ender(vmm.stop, ending))
        if snapshotter is not None:
            saved_signals[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
            signal.signal(signal.SIGUSR1, snapshotter.request)

        def on_action(action: str) -> None:
            assert vmm is not None
            if action == QUIT:
                vmm.stop(Outcome(Ending.QUIT, "quit from the console"))
            elif action == SHOW_HELP:
                with contextlib.suppress(OSError):
                    os.write(1, HELP.encode())  # to the terminal only, not into logs
            elif action == SNAPSHOT:
                if snapshotter is not None:
                    snapshotter.request()
                else:
                    _stderr("pyvmm: no --snapshot DIR was given\r\n")

        fd = stdin_fd() if spec.kind == "stdio" else None
        is_tty = fd is not None and os.isatty(fd)
        if is_tty:
            assert fd is not None
            session.raw_terminal(fd)
        vmm.start()
        running()
        if snapshotter is not None:
            snapshotter.start()
        if control is not None:
            from pyvmm.control import ControlServer

            server = ControlServer(control, vmm, _stderr)
            closers.append(server.close)
        if fd is not None:
            session.add_input(os.dup(fd), escapes=is_tty, on_action=on_action)
        if spec.kind == "unix":
            assert spec.path is not None
            session.add_unix(spec.path)
        try:
            ended = _wait_for_signals(vmm, timeout)
        except KeyboardInterrupt:  # SIGINT without a terminal (raw mode passes Ctrl-C on)
            vmm.stop(Outcome(Ending.INTERRUPTED, "interrupted"))
            ended = _wait_for_signals(vmm)
    finally:
        for close in closers:
            close()
        if vmm is not None:
            vmm.halt()
        if snapshotter is not None:
            snapshotter.join()
        session.close()  # no more input for the UART: then the VM can go
        if vmm is not None:
            vmm.close()
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
    # The terminal is back in its own mode here.
    if (table := vmm.exit_stats()) is not None:
        _stderr(f"pyvmm: VM exits (--stats)\n{table}")
    return ended
