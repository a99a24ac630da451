"""The snapshot state file: what it holds, how it is written, and how it is
checked before anything in it is used.

A snapshot is a directory (see :mod:`pyvmm.snapshot.store`); its
``state.json`` is one JSON object, described field by field in
docs/snapshots.md. Binary state (KVM's structs, the XSAVE area) is base64.
:func:`decode` checks every field's type and range, so a damaged or
foreign file is refused whole, with one line saying what is wrong, and
never half-loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pyvmm.arch.x86_64.state import IRQCHIPS, VCPU_STRUCTS, VcpuState, VmState
from pyvmm.devices.virtio.blk import DiskConfig
from pyvmm.devices.virtio.fs import ShareConfig
from pyvmm.devices.virtio.net import NetConfig
from pyvmm.errors import UserError
from pyvmm.kvm import CpuidEntry
from pyvmm.vmm.config import MachineConfig

FORMAT = "pyvmm-snapshot"
#: Bumped whenever the meaning of a field changes; older pyvmm refuses newer files.
VERSION = 1
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
#: Most vCPUs and devices a state file may describe.
MAX_VCPUS = 255
MAX_DEVICES = 4096
#: Most disks a state file may list.
MAX_DISKS = 256


class SnapshotError(UserError):
    """A snapshot that cannot be used; the message says why."""


@dataclass
class SavedConfig:
    """The machine the snapshot was taken of."""

    kernel: str
    initrd: str | None
    cmdline: str
    memory: int
    cpus: int
    #: Its virtio devices: the disks (their files are not part of the
    #: snapshot: a clone opens the same ones) and whether it has an rng.
    disks: tuple[DiskConfig, ...] = ()
    nets: tuple[NetConfig, ...] = ()
    rng: bool = False
    #: Shared host directories: a restored guest serves the same ones.
    shares: tuple[ShareConfig, ...] = ()
    #: Whether it has the ports of ``pyvmm run -- CMD``.
    command: bool = False

    @classmethod
    def of(cls, c: MachineConfig) -> SavedConfig:
        return cls(
            kernel=str(c.kernel), initrd=None if c.initrd is None else str(c.initrd),
            cmdline=c.cmdline, memory=c.memory, cpus=c.cpus, disks=c.disks, nets=c.nets,
            rng=c.rng, shares=c.shares, command=c.command is not None,
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {
            **vars(self),
            "disks": [vars(d) for d in self.disks],
            "nets": [vars(n) for n in self.nets],
            "shares": [vars(s) for s in self.shares],
        }


def disks_of(items: list[Any], where: str) -> tuple[DiskConfig, ...]:
    """Disks saved by :meth:`SavedConfig.as_json` (a state file, a migration's HELLO)."""
    out = []
    for item in items:
        doc = _Doc(item, where)
        out.append(DiskConfig(doc.text("path"), doc.flag("readonly"), doc.text("serial")))
    return tuple(out)


def config_from(value: Any, where: str) -> SavedConfig:
    """A machine's configuration as :meth:`SavedConfig.as_json` wrote it (in
    a state file, or a migration's HELLO); SnapshotError names what is wrong."""
    config = _Doc(value, where)
    return SavedConfig(
        kernel=config.text("kernel"),
        initrd=config.text("initrd", optional=True),
        cmdline=config.text("cmdline"),
        memory=config.num("memory", 1, 1 << 48),
        cpus=config.num("cpus", 1, MAX_VCPUS),
        disks=disks_of(config.seq("disks", MAX_DISKS), f"{where}.disks")
        if "disks" in config.value
        else (),
        nets=nets_of(config.seq("nets", MAX_DISKS), f"{where}.nets")
        if "nets" in config.value
        else (),
        rng="rng" in config.value and config.flag("rng"),
        shares=shares_of(config.seq("shares", MAX_DISKS), f"{where}.shares")
        if "shares" in config.value
        else (),
        command="command" in config.value and config.flag("command"),
    )


def shares_of(items: list[Any], where: str) -> tuple[ShareConfig, ...]:
    """Shared directories saved by :meth:`SavedConfig.as_json`."""
    out = []
    for item in items:
        doc = _Doc(item, where)
        out.append(
            ShareConfig(doc.text("host"), doc.text("guest"), doc.flag("readonly"), doc.text("tag"))
        )
    return tuple(out)


def nets_of(items: list[Any], where: str) -> tuple[NetConfig, ...]:
    """Network cards saved by :meth:`SavedConfig.as_json`."""
    out = []
    for item in items:
        doc = _Doc(item, where)
        kind = doc.text("kind")
        if kind not in ("tap", "user"):
            raise SnapshotError(f"state file: {where} has a card of kind {kind!r}")
        out.append(NetConfig(kind, doc.text("name"), doc.text("mac")))
    return tuple(out)


@dataclass
class HostInfo:
    """What the host was, so a different one can be refused."""

    vendor: str
    pvm: bool
    xsave_size: int
    #: Feature bits KVM offered there, by leaf: what the guest may be using.
    features: dict[str, int] = field(default_factory=dict)


@dataclass
class Snapshot:
    config: SavedConfig
    host: HostInfo
    vm: VmState
    vcpus: list[VcpuState]
    devices: dict[str, dict[str, Any]]
    #: Host-side state that is not a device (the PVM emulation's).
    emulation: dict[str, Any]
    #: Time.time() when taken.
    created: float
    #: What the front end remembers about the guest (e.g. its shell is ready).
    extra: dict[str, Any] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(snap: Snapshot) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "created": snap.created,
        "config": snap.config.as_json(),
        "host": vars(snap.host),
        "vm": {
            "irqchips": {k: _b64(v) for k, v in snap.vm.irqchips.items()},
            "pit": _b64(snap.vm.pit),
            "clock": snap.vm.clock,
            "clock_flags": snap.vm.clock_flags,
            "realtime": snap.vm.realtime,
        },
        "vcpus": [
            {
                "id": v.id,
                "cpuid": [
                    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] for e in v.cpuid
                ],
                "structs": {k: _b64(b) for k, b in v.structs.items()},
                "xsave": _b64(v.xsave),
                "msrs": [[index, value] for index, value in v.msrs.items()],
                "events": _b64(v.events),
                "tsc_khz": v.tsc_khz,
            }
            for v in snap.vcpus
        ],
        "devices": snap.devices,
        "emulation": snap.emulation,
        "extra": snap.extra,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# -- checking what is read ------------------------------------------------------


class _Doc:
    """Typed access to a decoded JSON object; any surprise is a SnapshotError."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise SnapshotError(f"state file: {where} is not an object")
        self.value = value
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.value:
            raise SnapshotError(f"state file: {self.where}.{key} is missing")
        return self.value[key]

    def num(self, key: str, low: int = 0, high: int = U64) -> int:
        v = self._get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise SnapshotError(f"state file: {self.where}.{key} is not a number in range")
        return v

    def real(self, key: str) -> float:
        v = self._get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise SnapshotError(f"state file: {self.where}.{key} is not a number")
        return float(v)

    def text(self, key: str, optional: bool = False) -> Any:
        v = self._get(key)
        if (v is None and optional) or isinstance(v, str):
            return v
        raise SnapshotError(f"state file: {self.where}.{key} is not text")

    def flag(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise SnapshotError(f"state file: {self.where}.{key} is not true or false")
        return v

    def sub(self, key: str) -> _Doc:
        return _Doc(self._get(key), f"{self.where}.{key}")

    def seq(self, key: str, most: int) -> list[Any]:
        v = self._get(key)
        if not isinstance(v, list) or len(v) > most:
            raise SnapshotError(f"state file: {self.where}.{key} is not a list of at most {most}")
        return v

    def blob(self, key: str, most: int = 1 << 20) -> bytes:
        v = self.text(key)
        try:
            data = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise SnapshotError(f"state file: {self.where}.{key} is not base64") from None
        if len(data) > most:
            raise SnapshotError(f"state file: {self.where}.{key} is too large")
        return data


def _ints(value: Any, count: int, where: str, high: int = U64) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= high for x in value)
    ):
        raise SnapshotError(f"state file: {where} is not {count} numbers in range")
    return value


def _vcpu(doc: _Doc) -> VcpuState:
    structs = doc.sub("structs")
    return VcpuState(
        id=doc.num("id", 0, MAX_VCPUS),
        cpuid=[CpuidEntry(*_ints(e, 7, f"{doc.where}.cpuid", U32)) for e in doc.seq("cpuid", 4096)],
        structs={name: structs.blob(name) for name in VCPU_STRUCTS},
        xsave=doc.blob("xsave"),
        msrs=dict(tuple(_ints(m, 2, f"{doc.where}.msrs")) for m in doc.seq("msrs", 4096)),  # type: ignore[misc]
        events=doc.blob("events"),
        tsc_khz=doc.num("tsc_khz", 0, U32),
    )


def _json_data(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON data, nested at most 8 deep."""
    if depth > 8:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_data(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_data(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def decode(data: bytes) -> Snapshot:
    """The snapshot in a state file's bytes; SnapshotError if any of it is wrong."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SnapshotError("state file: not valid JSON") from None
    top = _Doc(raw, "state")
    if top.value.get("format") != FORMAT:
        raise SnapshotError("not a pyvmm snapshot (state file format)")
    version = top.num("version", 0, U32)
    if version > VERSION:
        raise SnapshotError(
            f"snapshot format version {version} is newer than this pyvmm reads ({VERSION})"
        )
    if version != VERSION:
        raise SnapshotError(f"snapshot format version {version} is not one this pyvmm reads")
    config, host, vm = top.sub("config"), top.sub("host"), top.sub("vm")
    features = host.sub("features")
    devices, emulation, extra = top.sub("devices"), top.sub("emulation"), top.sub("extra")
    if len(devices.value) > MAX_DEVICES or not all(
        _json_data(_Doc(d, "device").value) for d in devices.value.values()
    ):
        raise SnapshotError("state file: state.devices is malformed")
    if not _json_data(emulation.value) or not _json_data(extra.value):
        raise SnapshotError("state file: state.emulation or state.extra is malformed")
    irqchips = vm.sub("irqchips")
    snap = Snapshot(
        config=config_from(config.value, config.where),
        host=HostInfo(
            vendor=host.text("vendor"),
            pvm=host.flag("pvm"),
            xsave_size=host.num("xsave_size", 0, 1 << 20),
            features={k: features.num(k, 0, U32) for k in features.value},
        ),
        vm=VmState(
            irqchips={name: irqchips.blob(name) for name in IRQCHIPS},
            pit=vm.blob("pit"),
            clock=vm.num("clock"),
            clock_flags=vm.num("clock_flags", 0, U32),
            realtime=vm.num("realtime"),
        ),
        vcpus=[
            _vcpu(_Doc(v, f"state.vcpus[{i}]")) for i, v in enumerate(top.seq("vcpus", MAX_VCPUS))
        ],
        devices=dict(devices.value),
        emulation=dict(emulation.value),
        created=top.real("created"),
        extra=dict(extra.value),
    )
    if len(snap.vcpus) != snap.config.cpus or [v.id for v in snap.vcpus] != list(
        range(snap.config.cpus)
    ):
        raise SnapshotError("state file: the vCPUs do not match the configuration")
    return snap
