"""An independent newc cpio reader, to check the archives pyvmm writes."""

from __future__ import annotations


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """An independent reader: (name, mode, data, rdev) for each entry."""
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, rdev))
