"""The ``pyvmm`` command.

    pyvmm run --kernel PATH [--initrd PATH] [--cmdline STR] [--memory 512M] [--cpus 1]

Exit status: 0 when the guest resets or powers off, 2 for bad input, and a
status of its own for each way a guest can fail (see README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pyvmm import console, console_backends, trace
from pyvmm.arch.x86_64 import pvm
from pyvmm.boot import inspect as kernel_inspect
from pyvmm.errors import UserError
from pyvmm.images import default
from pyvmm.images.default import GUEST_KINDS
from pyvmm.machine import ExitKind, Machine, MachineConfig, VmExit

EXIT_USAGE = 2
EXIT_VMM_ERROR = 1

_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A memory size: a whole number with an optional K, M, G or T suffix
    (binary units); a bare number means MiB, as in QEMU."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(f"invalid memory size {text!r}: use a number with K, M, G or T, e.g. 512M")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size == 0:
        raise UserError("memory size must be greater than 0")
    return size


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other pyvmm error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"pyvmm: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyvmm", description="A small VMM for Linux KVM.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="boot a kernel")
    run.add_argument(
        "--kernel", help="kernel: a vmlinux ELF or a bzImage (default: the default guest)"
    )
    run.add_argument("--initrd", help="initial ramdisk (e.g. a cpio archive)")
    run.add_argument(
        "--cmdline",
        default="",
        help="kernel command line (with the default guest: added to its own)",
    )
    run.add_argument(
        "--guest",
        default="auto",
        choices=GUEST_KINDS,
        help="which default guest to boot when no --kernel is given (default: auto)",
    )
    run.add_argument("--memory", default="512M", help="guest RAM, e.g. 512M or 2G (default 512M)")
    run.add_argument("--cpus", default="1", help="number of vCPUs (default 1)")
    run.add_argument(
        "--console",
        default="stdio",
        metavar="stdio|none|file:PATH|unix:PATH",
        help="where the serial console goes (default: stdio)",
    )
    run.add_argument("--console-log", metavar="PATH", help="also copy all guest output to PATH")
    run.add_argument(
        "--reboot",
        default="exit",
        choices=("exit", "restart"),
        help="when the guest reboots: exit with status 0, or boot it again (default: exit)",
    )
    run.add_argument("--debug", action="store_true", help="add a register dump to failure messages")
    run.add_argument(
        "--trace",
        default="",
        metavar="boot,exits",
        help="print each boot step with its numbers (boot), or each VM exit (exits, "
        "rate-limited), on standard error",
    )
    run.add_argument(
        "--stats",
        action="store_true",
        help="at exit, print a table of VM exits by reason and port or address",
    )
    inspect = sub.add_parser(
        "inspect", help="show what the loader sees in a kernel file, without running it"
    )
    inspect.add_argument("kernel", help="a vmlinux ELF or a bzImage")
    images = sub.add_parser(
        "images", help="fetch and build the default guest's images into the cache"
    )
    images.add_argument(
        "which", nargs="*", metavar="stock|small|initramfs", help="which images (default: all)"
    )
    return parser


def _images(which: list[str]) -> int:
    """``pyvmm images``: bring each image up to date and say where it is."""
    known = ["stock", "small", "initramfs"]
    if unknown := [w for w in which if w not in known]:
        raise UserError(f"unknown image {unknown[0]!r}: choose from {', '.join(known)}")
    which = which or known
    if "stock" in which:
        k = default.stock_kernel(refresh=True)
        print(f"stock kernel  {k.name}\n  {k.bzimage}\n  {k.vmlinux}")
    if "small" in which:
        k = default.small_kernel(refresh=True)
        print(f"small kernel  {k.name}\n  {k.bzimage}\n  {k.vmlinux}")
    if "initramfs" in which:
        print(f"initramfs\n  {default.initramfs_image(refresh=True)}")
    return 0


def _config(args: argparse.Namespace) -> MachineConfig:
    memory = parse_size(args.memory)
    if memory > host_memory():
        raise UserError(
            f"--memory {args.memory} is more than this host's {host_memory() >> 20} MiB of RAM"
        )
    try:
        cpus = int(args.cpus)
    except ValueError:
        raise UserError(f"invalid --cpus {args.cpus!r}: give a whole number") from None
    kernel, initrd, cmdline = args.kernel, args.initrd, args.cmdline
    if kernel is None:
        guest = default.default_guest(args.guest, pvm_host=pvm.host_is_pvm())
        print(f"pyvmm: booting {guest.description}", file=sys.stderr, flush=True)
        kernel = guest.kernel
        initrd = initrd if initrd is not None else guest.initrd
        cmdline = f"{guest.cmdline} {cmdline}".strip()
    return MachineConfig(
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        memory=memory,
        cpus=cpus,
        debug=args.debug,
        trace=trace.parse_kinds(args.trace),
        stats=args.stats,
    )


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):  # closed, or not backed by a descriptor
        return None


def run_machine(
    config: MachineConfig,
    spec: console_backends.ConsoleSpec | None = None,
    log: Path | None = None,
    append_log: bool = False,
) -> VmExit:
    """Boot the guest with its console where ``spec`` says (standard input and
    output by default), run it to the end, and put the terminal back however
    that end comes."""
    spec = spec or console_backends.ConsoleSpec("stdio")
    with contextlib.ExitStack() as stack:
        outputs: list[Callable[[bytes], None]] = []

        def out(data: bytes) -> None:
            for write in outputs:
                write(data)

        machine = Machine(config, console=out)
        stack.callback(machine.close)
        # Bad input (the kernel, the initrd, sizes) is found here, before any
        # console file is created.
        machine.build()
        if spec.kind == "stdio":
            outputs.append(lambda data: console.write_all(1, data))
        elif spec.kind == "file":
            assert spec.path is not None
            fd = console_backends.open_log(spec.path, append_log)
            stack.callback(os.close, fd)
            outputs.append(lambda data: console.write_all(fd, data))
        if log is not None:
            log_fd = console_backends.open_log(log, append_log)
            stack.callback(os.close, log_fd)
            outputs.append(lambda data: console.write_all(log_fd, data))
        result = _run(machine, spec, outputs, stack)
    # The terminal is back in its own mode here.
    if (table := machine.exit_stats()) is not None:
        print(f"pyvmm: VM exits (--stats)\n{table}", end="", file=sys.stderr)
    return result


def _run(
    machine: Machine,
    spec: console_backends.ConsoleSpec,
    outputs: list[Callable[[bytes], None]],
    stack: contextlib.ExitStack,
) -> VmExit:
    fd = _stdin_fd() if spec.kind == "stdio" else None
    is_tty = fd is not None and os.isatty(fd)
    endings: dict[int, VmExit] = {
        signal.SIGTERM: VmExit(ExitKind.TERMINATED, "terminated (SIGTERM)"),
        signal.SIGHUP: VmExit(ExitKind.HANGUP, "hung up (SIGHUP)"),
    }
    for sig in endings:
        stack.callback(signal.signal, sig, signal.getsignal(sig))
        signal.signal(sig, lambda n, _f: machine.stop(endings[n]))

    def on_action(action: str) -> None:
        if action == console.QUIT:
            machine.stop(VmExit(ExitKind.QUIT, "quit from the console"))
        elif action == console.SHOW_HELP:
            os.write(1, console.HELP.encode())

    if is_tty:
        assert fd is not None
        stack.enter_context(console.RawTerminal(fd))
    machine.start()
    com1 = machine.com1
    assert com1 is not None

    def pump(source: int, escapes: bool) -> None:
        p = console.InputPump(source, com1, com1.rx_space, escapes=escapes, on_action=on_action)
        p.start()
        stack.callback(p.stop)

    if fd is not None:
        pump(fd, escapes=is_tty)
    if spec.kind == "unix":
        assert spec.path is not None
        server = console_backends.UnixConsole(spec.path, on_client=lambda c: pump(c, False))
        stack.callback(server.close)
        outputs.append(server.write)  # the guest's output reaches the client from now on
    try:
        result = machine.wait()
    except KeyboardInterrupt:  # SIGINT without a terminal (raw mode passes Ctrl-C on)
        machine.stop(VmExit(ExitKind.INTERRUPTED, "interrupted"))
        result = machine.wait()
    assert result is not None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "images":
            return _images(args.which)
        if args.command == "inspect":
            print(kernel_inspect.describe(args.kernel), end="")
            return 0
        config = _config(args)
        spec = console_backends.parse(args.console)
        log = Path(args.console_log) if args.console_log else None
        result = run_machine(config, spec, log)
        while result.kind is ExitKind.RESET and args.reboot == "restart":
            print("pyvmm: guest rebooted; starting it again", file=sys.stderr, flush=True)
            result = run_machine(config, spec, log, append_log=True)
    except UserError as e:
        print(f"pyvmm: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pyvmm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a pyvmm or host failure: one line, the traceback with --debug
        debug = getattr(args, "debug", False)  # ``pyvmm images`` has no --debug
        hint = "" if debug else " (a pyvmm failure; --debug shows where)"
        print(f"pyvmm: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_VMM_ERROR
    if result.status != 0 or args.debug:
        print(f"pyvmm: {result.message}", file=sys.stderr)
        if result.detail and args.debug:
            print(result.detail, file=sys.stderr)
    return result.status


if __name__ == "__main__":
    sys.exit(main())
