"""Editing a snapshot's state file from tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
