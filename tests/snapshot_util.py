"""Editing a snapshot's state file, and judging a clone's clock, from tests."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyvmm
from pyvmm.snapshot import store


def rewrite(path: Path, change: dict[str, object]) -> None:
    """Edit the state file and give it a matching checksum, as a hand-made
    (or foreign) snapshot would have. ``change`` maps dotted keys
    (``vm.realtime``) to their new values."""
    doc = json.loads((path / store.STATE).read_bytes())
    for dotted, value in change.items():
        where = doc
        *parents, last = dotted.split(".")
        for key in parents:
            where = where[key]
        where[last] = value
    data = json.dumps(doc).encode()
    (path / store.STATE).write_bytes(data)
    (path / store.CHECKSUM).write_text(hashlib.sha256(data).hexdigest())


def clock_error(machine: pyvmm.Machine) -> float:
    """How far (s) the guest's ``date +%s`` lay outside the host's time
    while run() waited for it: 0 when within."""
    before = time.time()
    said = int(machine.run("date +%s").output)
    return min(0, said - int(before)) + max(0, said - time.time())
