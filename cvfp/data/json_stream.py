"""JSON arrays and JSON-lines files read record by record, in chunks (`iter_json`), with the
standard json module (no type inference); a document that ends early is an error naming the
line, or (data.on_truncated: keep_complete) the end of the records, recorded as a `Truncation`.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cvfp.data.chat_schema import DataError

CHUNK_CHARS = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
# What is left where a value was cut off: nothing, part of a number or of true/false/null.
_PARTIAL = re.compile(r"[-+0-9.eE]*|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?")


@dataclass
class Truncation:
    """Where a JSON document ended early (data.on_truncated: keep_complete)."""

    file: str
    line: int
    complete_records: int
    bytes_lost: int


class _JsonStream:
    """A JSON array of records, or records one after another (JSON lines), read in chunks:
    memory holds about one chunk plus the record being parsed, whatever the file size."""

    def __init__(self, path: Path, name: str, chunk: int = CHUNK_CHARS):
        self.path, self.chunk = name, chunk
        self.file = path.open("rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.bytes_read = 0

    def close(self) -> None:
        self.file.close()

    def more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at end of file."""
        if self.eof:
            return False
        raw = self.file.read(self.chunk)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as err:
            line_start = raw.rfind(b"\n", 0, err.start) + 1
            line = self.line + self.buf.count("\n", self.pos) + raw.count(b"\n", 0, err.start)
            raise DataError(
                f"{self.path}:{line}: invalid UTF-8 (byte {raw[err.start]:#04x} at column "
                f"{err.start - line_start + 1}); re-encode the file as UTF-8"
            ) from None
        self.bytes_read += len(raw)
        if not raw:
            self.eof = True
        if self.bytes_read == len(raw) and text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return True

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file)."""
        while True:
            self.advance(_WS.match(self.buf, self.pos).end())  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self, dec: json.JSONDecoder) -> object:
        """Parse the value at the current position; raises _EndsEarly when the file ends
        inside it, DataError on a syntax error."""
        while True:
            try:
                value, end = dec.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                unterminated = err.msg.startswith("Unterminated string")
                if not self.eof:
                    # An error near the buffer's end may only mean the value goes on.
                    if unterminated or len(self.buf) - err.pos < 32:
                        self.more()
                        continue
                    self.syntax_error(err.pos, err.msg)
                if unterminated or _PARTIAL.fullmatch(self.buf[err.pos :].rstrip()):
                    raise _EndsEarly() from None  # the file ends inside the value
                self.syntax_error(err.pos, err.msg)
            self.advance(end)
            return value

    def syntax_error(self, pos: int, msg: str) -> NoReturn:
        line = self.line + self.buf.count("\n", self.pos, pos)
        column = pos - self.buf.rfind("\n", 0, pos)
        snippet = self.buf[pos : pos + 40].split("\n")[0]
        raise DataError(
            f"{self.path}:{line}: not valid JSON ({msg} at line {line} column {column}): "
            f"{snippet!r}"
        )

    def rest_bytes(self) -> int:
        rest = len(self.buf[self.pos :].encode("utf-8"))
        return rest + sum(len(c) for c in iter(lambda: self.file.read(self.chunk), b""))

    def last_line(self) -> int:
        while self.more():
            pass
        return self.line + self.buf[self.pos :].rstrip().count("\n")


class _EndsEarly(Exception):
    pass


def iter_json(
    path: str | Path,
    on_truncated: str = "error",
    truncations: list[Truncation] | None = None,
    name: str | None = None,
) -> Iterator[tuple[str, object]]:
    """(row description, record) for each record of a JSON array or JSON-lines file, read
    with the standard json module (no type inference). A document that ends early raises
    DataError naming the line and the complete records before it, or with
    on_truncated='keep_complete' ends the iteration and appends a Truncation. Messages
    name the file as `name` (default: the path)."""
    path = Path(path)
    stream = _JsonStream(path, name=name or str(path))
    dec = json.JSONDecoder()
    n = 0
    try:
        first = stream.peek()
        if not first:
            raise DataError(f"{stream.path}: empty file (no conversations)")
        try:
            if first == "[":
                stream.advance(stream.pos + 1)
                while True:
                    c = stream.peek()
                    if c == "]":
                        stream.advance(stream.pos + 1)
                        if stream.peek():
                            stream.syntax_error(stream.pos, "data after the array's end")
                        return
                    if n:
                        if c == "":
                            raise _EndsEarly()
                        if c != ",":
                            stream.syntax_error(stream.pos, "expecting ',' or ']'")
                        stream.advance(stream.pos + 1)
                        c = stream.peek()
                    if c == "":
                        raise _EndsEarly()
                    where = f"array index {n} (line {stream.line})"
                    value = stream.value(dec)
                    yield where, value
                    n += 1
            else:
                while stream.peek():
                    where = f"line {stream.line}"
                    value = stream.value(dec)
                    yield where, value
                    n += 1
        except _EndsEarly:
            lost = stream.rest_bytes()
            line = stream.last_line()
            msg = (
                f"{stream.path}:{line}: JSON document ends early at line {line} (file truncated?): "
                f"{n} complete records before it"
            )
            if on_truncated != "keep_complete":
                raise DataError(
                    f"{msg}; repair the file, or set data.on_truncated: keep_complete to read "
                    f"those {n} records"
                ) from None
            if truncations is not None:
                truncations.append(Truncation(stream.path, line, n, lost))
    finally:
        stream.close()
