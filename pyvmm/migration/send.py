"""Sending a running guest to another pyvmm process (pre-copy).

:func:`migrate`:

1. connects and says what the machine is (HELLO: memory, vCPUs, each
   vCPU's CPUID, the host's CPU); the destination refuses before any page
   if it cannot take it;
2. turns on dirty logging (:class:`pyvmm.migration.dirty.DirtyLog`) and
   sends every page the guest ever wrote (round 0; a page never touched is
   zero there too, so it needs nothing);
3. sends what was dirtied meanwhile, round after round, measuring the
   bandwidth, until what is left would take less than ``max_downtime`` to
   send (or the rounds stop shrinking it);
4. pauses the guest, sends the last dirty pages and the state (every vCPU,
   the VM, the devices: the snapshot format), and waits for the
   destination to say the guest runs there.

Any failure (the connection drops, the destination refuses, dies or finds a
checksum wrong) turns dirty logging off and lets the guest run on here as
if nothing happened, and raises MigrationError saying why.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from pyvmm.migration import protocol
from pyvmm.migration.dirty import DirtyLog
from pyvmm.migration.protocol import Address, Channel, MigrationError
from pyvmm.snapshot.format import SavedConfig, encode
from pyvmm.snapshot.store import PM_FILE, PM_PRESENT, PM_SWAPPED, _page_flags
from pyvmm.snapshot.take import capture, features, vendor, xsave_size
from pyvmm.vmm.lifecycle import Vmm

PAGE = protocol.PAGE
#: Rounds after which the guest is paused whatever is left.
MAX_ROUNDS = 30
#: How long to keep trying to reach the destination.
CONNECT_SECONDS = 10.0


@dataclass
class Report:
    """What a migration did, for messages, --stats and bench/run.py."""

    address: str
    rounds: int = 0
    pages: int = 0
    zero_pages: int = 0
    bytes_sent: int = 0
    #: Connect to the guest running at the destination.
    total_seconds: float = 0.0
    #: The guest paused here to running there.
    downtime_seconds: float = 0.0
    #: The state's last byte sent to the destination's word that it runs.
    state_to_running_seconds: float = 0.0
    #: Pages sent in each round.
    per_round: list[int] | None = None

    def table(self) -> str:
        """What ``--stats`` prints after a migration."""
        rounds = "+".join(str(n) for n in self.per_round or [])
        return (
            f"  rounds      {self.rounds} pre-copy + 1 paused; pages {rounds}\n"
            f"  pages       {self.pages} sent, {self.zero_pages} of them all zero (a marker each)\n"
            f"  bytes       {self.bytes_sent}\n"
            f"  total       {self.total_seconds * 1000:.0f} ms (connect to running there)\n"
            f"  downtime    {self.downtime_seconds * 1000:.0f} ms (paused here to running there; "
            f"{self.state_to_running_seconds * 1000:.0f} ms from the state's last byte)\n"
        )


def connect(address: Address) -> socket.socket:
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        if address.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = address.path
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
            target = (address.host, address.port)
        try:
            sock.connect(target)
            return sock
        except OSError as e:
            sock.close()
            if time.monotonic() > deadline:
                raise MigrationError(f"cannot reach {address}: {e.strerror or e}") from None
            time.sleep(0.05)


def hello(vmm: Vmm) -> bytes:
    c = vmm.config
    assert vmm.kvm is not None
    cpuid = vmm.vcpus[0].cpuid
    return json.dumps({
        "format": "pyvmm-migration", "version": protocol.VERSION,
        **SavedConfig.of(c).as_json(),
        "cpuids": [[[e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] for e in v.cpuid]
                   for v in vmm.vcpus],
        "host": {"vendor": vendor(cpuid), "pvm": c.quirks.pvm, "xsave_size": xsave_size(vmm.kvm),
                 "features": features(cpuid)},
    }).encode()  # fmt: skip


class _Sender:
    def __init__(self, vmm: Vmm, channel: Channel, report: Report) -> None:
        assert vmm.memory is not None
        self.vmm, self.channel, self.report = vmm, channel, report
        self.memory = vmm.memory

    def send(self, round_no: int, gpas: list[int]) -> None:
        """The pages at ``gpas``, in batches; all-zero ones as a marker."""
        for i in range(0, len(gpas), protocol.BATCH):
            batch: list[tuple[int, bytes | None]] = []
            for gpa in gpas[i : i + protocol.BATCH]:
                data = self.memory.read(gpa, PAGE)
                if data.count(0) == PAGE:
                    batch.append((gpa, None))
                    self.report.zero_pages += 1
                else:
                    batch.append((gpa, data))
            self.channel.send(protocol.PAGES, protocol.pages_frame(round_no, batch))
        self.channel.send(
            protocol.ROUND, round_no.to_bytes(1, "little") + len(gpas).to_bytes(8, "little")
        )
        self.report.pages += len(gpas)

    def touched(self) -> list[int]:
        """Every page the guest could have changed: for anonymous RAM, those
        ever written (present or swapped out: /proc/self/pagemap); for RAM
        mapped from a snapshot, every page (unread ones are the file's)."""
        out: list[int] = []
        for _, gpa, size, host in self.memory.slots():
            if self.memory.file_backed:
                out += range(gpa, gpa + size, PAGE)
                continue
            for i, entry in enumerate(_page_flags(host, size)):
                if entry & PM_SWAPPED or (entry & PM_PRESENT and not entry & PM_FILE):
                    out.append(gpa + i * PAGE)
        return out


def migrate(
    vmm: Vmm,
    address: Address,
    max_downtime: float = 0.1,
    extra: dict[str, Any] | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> Report:
    """Move ``vmm``'s guest to the pyvmm listening at ``address``. On
    success the guest runs there and this machine is stopped by the caller;
    on failure it runs on here and MigrationError says why."""
    assert vmm.vm is not None and vmm.memory is not None
    report = Report(str(address), per_round=[])
    trace = vmm.trace_out if "migration" in vmm.config.trace else None
    started = time.monotonic()
    channel = Channel(connect(address))
    log = DirtyLog(vmm.vm, vmm.memory)
    paused_here = False
    try:
        channel.send(protocol.HELLO, hello(vmm))
        channel.expect(protocol.ACCEPT)
        sender = _Sender(vmm, channel, report)
        log.start()
        pages = sender.touched()
        for round_no in range(max_rounds):
            round_start, bytes_before = time.monotonic(), channel.sent
            sender.send(min(round_no, 255), pages)
            assert report.per_round is not None
            report.per_round.append(len(pages))
            report.rounds = round_no + 1
            took = time.monotonic() - round_start
            bandwidth = (channel.sent - bytes_before) / max(took, 1e-6)
            pages = log.take()
            left = len(pages) * (PAGE + 8) / max(bandwidth, 1.0)
            if trace is not None:
                trace(
                    f"migration round {round_no}: {report.per_round[-1]} pages, "
                    f"{channel.sent - bytes_before} bytes in {took * 1000:.0f} ms "
                    f"({bandwidth / 2**20:.0f} MiB/s); {len(pages)} dirtied meanwhile "
                    f"(~{left * 1000:.0f} ms to send, target {max_downtime * 1000:.0f} ms)\n"
                )
            if left <= max_downtime or (round_no and len(pages) >= report.per_round[-1]):
                break
        if not vmm.paused:
            vmm.pause()
            paused_here = True
        paused_at = time.monotonic()
        # What the last round left, and what the guest wrote since.
        pages = sorted(set(pages).union(log.take()))
        sender.send(min(report.rounds, 255), pages)
        assert report.per_round is not None
        report.per_round.append(len(pages))
        state = encode(capture(vmm, extra))
        channel.send(protocol.STATE, state + hashlib.sha256(state).digest())
        state_sent = time.monotonic()
        if trace is not None:
            trace(
                f"migration paused: {len(pages)} last pages and {len(state)} bytes of state "
                f"(SHA-256 {hashlib.sha256(state).hexdigest()[:16]}...) sent in "
                f"{(state_sent - paused_at) * 1000:.0f} ms\n"
            )
        channel.expect(protocol.RESUMED)
        now = time.monotonic()
        report.downtime_seconds = now - paused_at
        report.state_to_running_seconds = now - state_sent
        if trace is not None:
            trace(
                f"migration done: the guest runs at {address}; downtime "
                f"{report.downtime_seconds * 1000:.0f} ms\n"
            )
    except MigrationError as e:
        log.stop()
        if paused_here:
            vmm.resume()
        raise MigrationError(
            f"migration to {address} failed: {e}; the guest runs on here"
        ) from None
    finally:
        report.bytes_sent = channel.sent
        channel.close()
    report.total_seconds = time.monotonic() - started
    return report
