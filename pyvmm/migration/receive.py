"""Receiving a guest: the third way to build a machine, next to a fresh boot
and a restored snapshot.

:func:`receive` listens at an address and takes one migration: it checks
the source's HELLO (memory, vCPUs, format version, the CPU the guest may
rely on) and refuses with a reason before any page comes if it cannot take
the guest; assembles the same machine (:func:`pyvmm.vmm.builder.assemble`,
each vCPU with the source's CPUID, anonymous RAM); writes each page as it
arrives; checks the state's SHA-256, restores it as a snapshot is restored,
and hands back the machine with :class:`Incoming`, whose :meth:`resumed`
tells the source once the guest runs here. Any failure sends FAILED (when
it can), releases everything and raises MigrationError.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyvmm.errors import UserError
from pyvmm.kvm import CpuidEntry, KvmError
from pyvmm.migration import protocol
from pyvmm.migration.protocol import Address, Channel, MigrationError
from pyvmm.snapshot.format import (
    HostInfo,
    SavedConfig,
    Snapshot,
    SnapshotError,
    config_from,
    decode,
)
from pyvmm.snapshot.restore import check_host, config_of, restore_state
from pyvmm.sockets import claim_path
from pyvmm.vmm import boot_trace
from pyvmm.vmm.builder import assemble
from pyvmm.vmm.lifecycle import Console, Vmm

PAGE = protocol.PAGE


class MigrationRefused(UserError):
    """This destination cannot take the guest (another size, CPU, format):
    said before any page is sent."""


def listen(address: Address) -> socket.socket:
    """A listening socket at ``address`` (a Unix socket nobody listens on
    any more is replaced; one in use, or a file, is refused)."""
    if address.kind == "unix":
        claim_path(Path(address.path), f"--incoming {address}")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.fchmod(server.fileno(), 0o600)  # guest memory will come through it
        target: Any = address.path
    else:
        server = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target = (address.host, address.port)
    try:
        server.bind(target)
    except OSError as e:
        server.close()
        raise MigrationError(f"cannot listen on {address}: {e.strerror or e}") from None
    server.listen(1)
    return server


class Incoming:
    """A received machine, restored and not yet running."""

    def __init__(self, vmm: Vmm, channel: Channel, pages: int, extra: dict[str, Any]) -> None:
        self.vmm = vmm
        self.channel = channel
        self.pages = pages
        #: What the source's front end remembered about the guest.
        self.extra = extra

    def resumed(self) -> None:
        """Tell the source the guest runs here (call after ``vmm.start()``)."""
        try:
            self.channel.send(protocol.RESUMED)
        finally:
            self.channel.close()

    def failed(self, reason: str) -> None:
        with contextlib.suppress(MigrationError):
            self.channel.send(protocol.FAILED, protocol.json_frame({"reason": reason}))
        self.channel.close()


def _check_hello(
    hello: dict[str, Any], memory: int | None, cpus: int | None
) -> tuple[SavedConfig, HostInfo, list[list[CpuidEntry]]]:
    if hello.get("format") != "pyvmm-migration" or hello.get("version") != protocol.VERSION:
        raise MigrationRefused(
            f"the source speaks migration format version {hello.get('version')}, "
            f"this pyvmm {protocol.VERSION}"
        )
    try:
        config = config_from(hello, "HELLO")
        host = HostInfo(**hello["host"])
        cpuids = [[CpuidEntry(*map(int, row)) for row in table] for table in hello["cpuids"]]
    except (KeyError, TypeError, ValueError, SnapshotError):
        raise MigrationError("a malformed HELLO from the source") from None
    if memory is not None and memory != config.memory:
        raise MigrationRefused(
            f"the guest has {config.memory >> 20} MiB of memory; this destination was "
            f"started for {memory >> 20} MiB"
        )
    if cpus is not None and cpus != config.cpus:
        raise MigrationRefused(
            f"the guest has {config.cpus} vCPUs; this destination was started for {cpus}"
        )
    if len(cpuids) != config.cpus or not 1 <= config.cpus <= 255 or config.memory % PAGE:
        raise MigrationError("a malformed HELLO from the source")
    return config, host, cpuids


def receive(
    address: Address,
    console: Console,
    trace_out: Callable[[str], None] | None = None,
    memory: int | None = None,
    cpus: int | None = None,
    trace_kinds: tuple[str, ...] = (),
    stats: bool = False,
    debug: bool = False,
    on_listening: Callable[[], None] = lambda: None,
) -> Incoming:
    """Wait at ``address`` for one migration and build the machine it
    brings. ``memory``/``cpus``: what this destination was started for."""
    trace = boot_trace.BootTrace(trace_out if "boot" in trace_kinds else None)
    server = listen(address)
    try:
        on_listening()
        sock, _ = server.accept()
    finally:
        server.close()
        if address.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)
    channel = Channel(sock)
    vmm: Vmm | None = None
    try:
        hello = protocol.json_payload(channel.expect(protocol.HELLO)[1])
        saved, host, cpuids = _check_hello(hello, memory, cpus)
        config = config_of(saved)
        config.trace, config.stats, config.debug = trace_kinds, stats, debug
        vmm = Vmm(config, console, trace_out)
        assemble(vmm, trace, cpuids=cpuids)
        check_host(vmm, host, saved.cpus, f"the guest from {address}")
        channel.send(protocol.ACCEPT)
        pages, state = _take_pages(vmm, channel, trace_out if "migration" in trace_kinds else None)
        if trace:
            trace.step(f"receive the guest from {address} (migration.receive)", [
                f"{pages} pages written into guest RAM, each batch's CRC-32 checked",
                "the state file's SHA-256 checked"])  # fmt: skip
        snap = _state(state)
        restore_state(vmm, snap, trace)
        return Incoming(vmm, channel, pages, snap.extra)
    except (MigrationError, UserError, KvmError, ValueError) as e:
        reason = str(e)
        refused = isinstance(e, UserError) and not channel.received_pages
        answer = protocol.REFUSE if refused else protocol.FAILED
        with contextlib.suppress(MigrationError):
            channel.send(answer, protocol.json_frame({"reason": reason}))
        channel.close()
        if vmm is not None:
            vmm.close()
        if refused:
            raise MigrationRefused(f"refused the guest from the source: {reason}") from None
        raise MigrationError(f"incoming migration failed: {reason}") from None
    except BaseException:
        channel.close()
        if vmm is not None:
            vmm.close()
        raise


def _take_pages(
    vmm: Vmm, channel: Channel, trace: Callable[[str], None] | None
) -> tuple[int, bytes]:
    """PAGES and ROUND frames until the STATE frame: the pages written, and
    the STATE payload."""
    memory = vmm.memory
    assert memory is not None
    count = in_round = 0
    while True:
        kind, payload = channel.expect(protocol.PAGES, protocol.ROUND, protocol.STATE)
        if kind == protocol.STATE:
            if trace is not None:
                trace(f"migration state received: {len(payload) - 32} bytes\n")
            return count, payload
        if kind == protocol.ROUND:
            if trace is not None:
                trace(f"migration round {payload[0]} received: {in_round} pages\n")
            in_round = 0
            continue
        round_no, pages = protocol.read_pages(payload)
        channel.received_pages = True
        for gpa, data in pages:
            if not memory.contains(gpa, PAGE):
                raise MigrationError(f"the source sent a page outside guest RAM ({gpa:#x})")
            if data is not None:
                memory.view(gpa, PAGE)[:] = data
            elif round_no:  # in round 0 the page is still zero here
                memory.fill(gpa, PAGE)
            count += 1
            in_round += 1


def _state(payload: bytes) -> Snapshot:
    state, digest = payload[:-32], payload[-32:]
    if len(payload) < 32 or hashlib.sha256(state).digest() != digest:
        raise MigrationError("the state failed its checksum")
    return decode(state)
