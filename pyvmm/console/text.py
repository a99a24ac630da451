"""The console as text, for waiting on what the guest prints."""

from __future__ import annotations

import codecs


class ConsoleText:
    """The console as text, built as it arrives: UTF-8 decoded incrementally,
    CR LF turned into LF, joined only when read. (Decoding and joining the
    whole console for each byte the UART delivers cost about a second of CPU
    over a Linux boot.)"""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chunks: list[str] = []
        self._held_cr = False  # a CR at the end of the data so far: CR LF may follow
        self._joined = ""
        #: Characters so far (a held CR not counted).
        self.length = 0

    def add(self, data: bytes) -> None:
        chunk = self._decoder.decode(data)
        if self._held_cr:
            chunk = "\r" + chunk
        self._held_cr = chunk.endswith("\r")
        if self._held_cr:
            chunk = chunk[:-1]
        chunk = chunk.replace("\r\n", "\n")
        if chunk:
            self._chunks.append(chunk)
            self.length += len(chunk)

    def text(self) -> str:
        if self._chunks:
            self._joined += "".join(self._chunks)
            self._chunks.clear()
        return self._joined
