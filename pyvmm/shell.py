"""Driving the default guest's shell through its console: commands with
their output and status, files into a running guest, its wall clock.

Everything goes through the serial console, typed in as a user would:
:func:`run` puts marker lines around a command's output (printed by the
guest's shell on the same input line as the command, so no prompt comes
between, and the echo of the typed line never matches them: there a marker
is followed by ";" or "$?"). :func:`put_file` sends a file as base64 in a
here-document, for a guest that is already running (a restored one), where
the initramfs can no longer carry it.
"""

from __future__ import annotations

import base64
import os
import shlex
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: base64 characters per line sent.
LINE = 76
#: A here-document's end marker (base64 never contains it).
EOF_MARK = "PYVMM-EOF"


@dataclass(frozen=True)
class RunResult:
    output: str
    status: int
    duration: float


class Console(Protocol):
    """What the shell helpers need of a machine (pyvmm.Machine)."""

    @property
    def console(self) -> str: ...

    def send(self, text: str | bytes, timeout: float = ...) -> None: ...

    def wait_for(self, pattern: str, timeout: float = ..., start: int = ...) -> object: ...

    def wait_ready(self, timeout: float = ...) -> None: ...


#: What :func:`prepare` types: no echo, no prompts. Without echo busybox's
#: shell reads lines with plain stdio, where a signal (SIGCHLD from a
#: background job ending) reads like the end of input and would end the
#: shell, PID 1: "ignoreeof" makes it read on. The kernel's own messages
#: stop going to the console but for emergencies (a panic): one printed in
#: the middle of a command's output would become part of it (dmesg keeps
#: them all).
PREPARE = "stty -echo; PS1=''; PS2=''; set -o ignoreeof; dmesg -n 1"


def prepare(machine: Console, timeout: float) -> None:
    """Turn the shell's echo and prompts off, and wait until it has: input
    the shell has not read yet is not part of the guest (a snapshot taken
    meanwhile would lose it). The marker is printed from two pieces, so
    the echo of the typed line (still on) cannot look like it."""
    tag = uuid.uuid4().hex[:12]
    mark = len(machine.console)
    machine.send(f"{PREPARE}; printf 'PYVMM-READY-%s\\n' {tag}\n", timeout)
    machine.wait_for(rf"^PYVMM-READY-{tag}\n", timeout, start=mark)


def run(machine: Console, command: str, timeout: float, body: str = "") -> RunResult:
    """Run ``command`` in the guest's shell: its output and exit status
    (one ending in "&" is started in the background and returns at once).
    ``body``: lines typed after the command line (a here-document's)."""
    started = time.monotonic()
    machine.wait_ready(timeout)
    tag = uuid.uuid4().hex[:12]
    command = command.strip().rstrip(";")  # it is followed by "; printf ..."
    # A command put in the background ends with its own separator, "&".
    then = " " if command.endswith("&") and not command.endswith("&&") else "; "
    mark = len(machine.console)
    line = (
        f"printf '%s\\n' PYVMM-BEGIN-{tag}; {command}{then}printf '%s %s\\n' PYVMM-END-{tag} $?\n"
    )
    machine.send(line + body, max(timeout - (time.monotonic() - started), 0.001))
    left = timeout - (time.monotonic() - started)
    end = machine.wait_for(rf"PYVMM-END-{tag} (\d+)\n", max(left, 0.001), start=mark)
    begin = machine.wait_for(rf"PYVMM-BEGIN-{tag}\n", 1, start=mark)
    output = machine.console[begin.end() : end.start()]  # type: ignore[attr-defined]
    return RunResult(output, int(end.group(1)), time.monotonic() - started)  # type: ignore[attr-defined]


def put_file(machine: Console, host: str | os.PathLike[str], guest: str, timeout: float) -> None:
    """Copy a host file into the running guest at ``guest``, with its
    permission bits; raises OSError if the guest could not write it."""
    data = Path(host).read_bytes()
    mode = stat.S_IMODE(os.stat(host).st_mode)
    encoded = base64.b64encode(data).decode()
    lines = "".join(encoded[i : i + LINE] + "\n" for i in range(0, len(encoded), LINE))
    target = shlex.quote(guest)
    command = (
        f"mkdir -p $(dirname {target}) && base64 -d > {target} << '{EOF_MARK}' "
        f"&& chmod {mode:o} {target}"
    )
    result = run(machine, command, timeout, body=lines + EOF_MARK + "\n")
    if result.status != 0:
        raise OSError(f"the guest could not write {guest}: {result.output.strip()}")


def set_clock(machine: Console, timeout: float) -> None:
    """Set the guest's wall clock to the host's, from inside the guest,
    where it is not right already. ``hwclock -s`` reads the CMOS clock,
    which answers with the host's UTC time at that moment, and sets the
    system clock in the same process. A time typed in by the host (``date
    -s @T``) would be late by however long the command took to reach the
    guest and start, which is seconds on a busy host that emulates guest
    kernel mode. The CMOS clock has whole seconds, so the guest ends up to
    one second behind whatever the load. A guest whose clock already reads
    at least the second before the host's when the command was sent is
    left alone, by a shell builtin that starts no process: on PVM hosts a
    guest that keeps time with the TSC (the host's there) has seen the time
    on disk. ``date -s`` with the host's time stays as the fallback, for a
    guest without /dev/rtc."""
    sent = time.time()
    fallback = f"date -u -s @{round(sent)} > /dev/null"
    right = f"[ $EPOCHSECONDS -ge {int(sent) - 1} ]"  # busybox ash and bash
    run(machine, f"{right} || hwclock -u -s 2> /dev/null || {fallback}", timeout)
