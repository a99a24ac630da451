"""What ``pyvmm run`` does with a configuration: build the machine, wire its
console, run it to its end, and give everything back however it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pyvmm.console import backends
from pyvmm.console.session import ConsoleSession, stdin_fd
from pyvmm.console.terminal import HELP, QUIT, SHOW_HELP
from pyvmm.vmm import builder
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.ending import Ending, Outcome

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


def run_machine(
    config: MachineConfig,
    spec: backends.ConsoleSpec | None = None,
    log: Path | None = None,
    append_log: bool = False,
) -> Outcome:
    """Boot the guest with its console where ``spec`` says (standard input and
    output by default), run it to the end, and put the terminal back however
    that end comes."""
    spec = spec or backends.ConsoleSpec("stdio")
    session = ConsoleSession()
    saved_signals: dict[signal.Signals, Any] = {}
    vmm = None
    try:
        # Bad input (the kernel, the initrd, sizes) is found here, before any
        # console file or socket is created.
        vmm = builder.build_for_boot(config, session.port(), _stderr)
        com1 = vmm.com1
        assert com1 is not None
        session.attach(com1, com1.tx_ready)
        protect = tuple(Path(p) for p in (config.kernel, config.initrd) if p is not None)
        if spec.kind == "stdio":
            stopping = vmm.stop
            session.add_stdout(
                lambda: stopping(Outcome(Ending.HANGUP, "standard output was closed"))
            )
        elif spec.kind == "file":
            assert spec.path is not None
            session.add_file(spec.path, append_log, protect)
        if log is not None:
            session.add_file(log, append_log, protect)
        for sig, ending in SIGNAL_ENDINGS.items():
            saved_signals[sig] = signal.getsignal(sig)
            signal.signal(sig, _ender(vmm.stop, ending))

        def on_action(action: str) -> None:
            assert vmm is not None
            if action == QUIT:
                vmm.stop(Outcome(Ending.QUIT, "quit from the console"))
            elif action == SHOW_HELP:
                with contextlib.suppress(OSError):
                    os.write(1, HELP.encode())  # to the terminal only, not into logs

        fd = stdin_fd() if spec.kind == "stdio" else None
        is_tty = fd is not None and os.isatty(fd)
        if is_tty:
            assert fd is not None
            session.raw_terminal(fd)
        vmm.start()
        if fd is not None:
            session.add_input(os.dup(fd), escapes=is_tty, on_action=on_action)
        if spec.kind == "unix":
            assert spec.path is not None
            session.add_unix(spec.path)
        try:
            ended = vmm.wait()
        except KeyboardInterrupt:  # SIGINT without a terminal (raw mode passes Ctrl-C on)
            vmm.stop(Outcome(Ending.INTERRUPTED, "interrupted"))
            ended = vmm.wait()
        assert ended is not None
    finally:
        if vmm is not None:
            vmm.close()
        session.close()
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
    # The terminal is back in its own mode here.
    if (table := vmm.exit_stats()) is not None:
        _stderr(f"pyvmm: VM exits (--stats)\n{table}")
    return ended
