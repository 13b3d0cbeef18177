"""The bytes of an input file as lines: gzip decompressed under a cap, lines found and checked for UTF-8.

Both JSON readers take their lines from one `LineIndex`, so they see the same lines and the same byte-level
problems: a line that is not UTF-8 or longer than MAX_LINE_BYTES, the line a damaged gzip file ends in, a
file that is one JSON array. A gzip file that would expand past MAX_DECOMPRESSED_BYTES is refused whole.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _env_size(name: str, default: int) -> int:
    """A positive whole number from the environment (a size in KiB or MiB), else `default`."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


# A line over this is quarantined on its own line (`too_large`); 2 MiB is DuckDB's own limit for a CSV line.
MAX_LINE_BYTES = _env_size("MONITOR_MAX_LINE_KB", 2048) << 10
# A gzip file is decompressed in memory (the line index keeps it): a file whose decompressed bytes, plus 8
# bytes a line for its index, pass this is refused whole (`too_large`) before memory does. Plain files are
# mapped, not held; their line index counts against the same cap.
MAX_DECOMPRESSED_BYTES = _env_size("MONITOR_MAX_DECOMPRESSED_MB", 1024) << 20
KEEP_BYTES = 4096  # of a line too long to keep whole in the quarantine
BOM = b"\xef\xbb\xbf"
JSON_ARRAY = "JSON array, expected one JSON object per line"


class TooLarge(Exception):
    """Raised by `file_chunks` when a file's decompressed bytes pass the cap."""


class DamagedGzip(Exception):
    """Raised by `file_chunks` after the last bytes that could be decompressed."""


def too_large(cap: int) -> str:
    return (f"file too large: more than {cap >> 20:,} MiB decompressed (with its line index), the limit "
            "MONITOR_MAX_DECOMPRESSED_MB; not read")


def file_chunks(path: str, size: int = 1 << 24, cap: int | None = None) -> Iterator[bytes]:
    """The bytes of a file, decompressed when it ends in .gz. A damaged gzip file (cut short or corrupt)
    yields what precedes the damage, then raises DamagedGzip; one that expands past `cap` bytes (default
    MAX_DECOMPRESSED_BYTES) raises TooLarge once it has, so a gzip bomb never expands further."""
    cap = MAX_DECOMPRESSED_BYTES if cap is None else cap
    with open(path, "rb") as f:
        if not path.endswith(".gz"):
            while chunk := f.read(size):
                yield chunk
            return
        member, in_member, total = zlib.decompressobj(31), False, 0
        while data := f.read(1 << 16):  # small reads: a corrupt block loses only the output of its own read
            while data or in_member:
                in_member = True
                try:
                    # At most a chunk at a time: 64 KiB of a bomb would otherwise expand to 64 MiB at once.
                    out = member.decompress(data, size)
                except zlib.error as exc:
                    raise DamagedGzip(f"corrupt gzip: {exc}") from None
                data = member.unconsumed_tail
                total += len(out)
                if total > cap:
                    raise TooLarge(too_large(cap))
                if out:
                    yield out
                if member.eof:
                    # What follows a member is the next one (concatenated gzip files are valid).
                    data, member, in_member = member.unused_data, zlib.decompressobj(31), False
                elif not data and len(out) < size:
                    break  # this input is used up and no output is pending: read on
        if in_member:
            raise DamagedGzip("truncated gzip: the file ends before its end-of-stream marker")


def _invalid_utf8(lines: pa.Array, start: int = 0) -> list[int]:
    """Positions of the lines that are not UTF-8, found by halving (each cast checks a slice in C++)."""
    try:
        lines.cast(pa.large_string())
        return []
    except pa.ArrowInvalid:
        if len(lines) == 1:
            return [start]
        half = len(lines) // 2
        return _invalid_utf8(lines.slice(0, half), start) + _invalid_utf8(lines.slice(half), start + half)


def _readable(line: pa.Scalar) -> str:
    """A line as text for the quarantine: bytes that are not UTF-8 replaced, a very long line cut."""
    data = memoryview(line.as_buffer())
    text = data[:KEEP_BYTES].tobytes().decode("utf-8", "replace").rstrip("\r\n")
    return text + " …" if len(data) > KEEP_BYTES else text


class LineIndex:
    """Where every line of a JSON lines file starts and ends, built in a background thread (file reading
    and newline search release the GIL, so it overlaps DuckDB's parse); gzip is decompressed in the
    thread and kept. Both JSON readers take their lines from here, so they see the same lines (a UTF-8
    BOM is not part of the first) and the same byte-level problems."""

    def __init__(self, path: str, chunk_size: int = 1 << 24):
        self.path, self.chunk_size = path, chunk_size
        self.damage: str | None = None  # why a gzip file ends early
        self.too_large: str | None = None  # why the file is not read at all
        self._data = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            gz = self.path.endswith(".gz")
            ends, pieces, head, offset, n_lines = [], [], b"", 0, 0
            cap = MAX_DECOMPRESSED_BYTES
            try:
                for chunk in file_chunks(self.path, self.chunk_size, cap):
                    ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + offset)
                    n_lines += len(ends[-1])
                    if gz:
                        pieces.append(chunk)
                    if len(head) < 4096:
                        head += chunk[:4096 - len(head)]
                    offset += len(chunk)
                    # What this index holds: the decompressed bytes, and 8 bytes a line for where it ends.
                    if (offset if gz else 0) + 8 * n_lines > cap:
                        raise TooLarge(too_large(cap))
            except DamagedGzip as exc:
                self.damage = str(exc)
            except TooLarge as exc:
                self.too_large = str(exc)
                ends, pieces, offset = [], [], 0  # nothing of it is read
            self.size = offset
            self.ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
            self._data = b"".join(pieces) if gz else None
            self.start = len(BOM) if head.startswith(BOM) else 0
            # A file that opens with '[' is one JSON document, an array, not JSON lines.
            self.array = re.match(rb"\s*\[", head[self.start:]) is not None
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def wait(self) -> LineIndex:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self

    @property
    def _open_end(self) -> bool:
        """The last line has no newline."""
        return self.size > self.start and (not len(self.ends) or int(self.ends[-1]) != self.size - 1)

    @property
    def count(self) -> int:
        return len(self.ends) + int(self._open_end)

    def _offsets(self) -> np.ndarray:
        """Line i spans offsets[i]:offsets[i + 1], its newline included."""
        return np.concatenate(([self.start], self.ends + 1, [self.size] * self._open_end)).astype(np.int64)

    def lengths(self) -> np.ndarray:
        """The bytes of every line, without its newline."""
        lengths = np.diff(self._offsets())
        lengths[:len(self.ends)] -= 1
        return lengths

    def raw_lines(self, rows: np.ndarray | None = None) -> pa.Array:
        """The bytes of the given lines (0-based; every line by default), newlines included. Every line
        is a view of the file (memory-mapped, or the decompressed gzip); only a selection is copied."""
        offsets = self._offsets()
        if rows is not None and self._data is None:
            # A few lines of a plain file are read as they are: touching a mapping all over a big file
            # would page all of it into this process.
            rows = np.asarray(rows, dtype=np.int64)
            starts, ends = offsets[rows].tolist(), offsets[rows + 1].tolist()
            with open(self.path, "rb") as f:
                return pa.array([os.pread(f.fileno(), end - start, start) for start, end in zip(starts, ends, strict=True)],
                                pa.large_binary())
        if self._data is None:
            with open(self.path, "rb") as f:
                self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        lines = pa.Array.from_buffers(pa.large_binary(), self.count,
                                      [None, pa.py_buffer(offsets), pa.py_buffer(self._data)])
        return lines if rows is None else lines.take(pa.array(rows, pa.int64()))

    def block(self, start: int, stop: int) -> pa.Table:
        """`lines` of the consecutive lines start:stop (0-based), read from a plain file with one read: a big
        file is taken a block at a time without mapping (and so holding) all of it."""
        if self._data is not None:  # a gzip file's bytes are in memory already
            return self.lines(np.arange(start, stop, dtype=np.int64))
        offsets = self._offsets()[start:stop + 1]
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), int(offsets[-1] - offsets[0]), int(offsets[0]))
        binary = pa.Array.from_buffers(pa.large_binary(), stop - start,
                                       [None, pa.py_buffer(offsets - offsets[0]), pa.py_buffer(data)])
        return self._table(binary, np.arange(start, stop, dtype=np.int64))

    def block_ends(self, budget: int) -> list[int]:
        """Line numbers (0-based, exclusive) that cut the file into blocks of about `budget` bytes each."""
        offsets = self._offsets()
        cuts = np.searchsorted(offsets, np.arange(offsets[0] + budget, offsets[-1], budget)).tolist()
        return sorted({min(max(c, 1), self.count) for c in cuts} | {self.count}) if self.count else []

    def lines(self, rows: np.ndarray | None = None) -> pa.Table:
        """(line_no, text, problem) of the given lines (0-based; every line by default) for the careful
        reader. A line it must not parse has a problem (in a JSON array file, cut off by a damaged gzip,
        too long, not UTF-8), and a readable rendering as its text, for the quarantine."""
        binary = self.raw_lines(rows)
        rows = np.arange(self.count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        return self._table(binary, rows)

    def _table(self, binary: pa.Array, rows: np.ndarray) -> pa.Table:
        problems: dict[int, str] = {}  # position in rows -> reason
        if self.damage and self._open_end:
            for i in np.flatnonzero(rows == self.count - 1):
                problems[int(i)] = f"{self.damage}; the file ends inside this line"
        lengths = self.lengths()[rows]
        for i in np.flatnonzero(lengths > MAX_LINE_BYTES):
            problems.setdefault(int(i), f"line too long: {lengths[i]:,} bytes, the limit is {MAX_LINE_BYTES:,}")
        try:
            text = binary.cast(pa.large_string())
        except pa.ArrowInvalid:
            for i in _invalid_utf8(binary):
                problems.setdefault(i, "invalid UTF-8")
        problem = pa.nulls(len(rows), pa.string())
        if problems:
            at = list(problems)
            readable, reasons = np.full(len(rows), None, dtype=object), np.full(len(rows), None, dtype=object)
            readable[at], reasons[at] = [_readable(binary[i]) for i in at], list(problems.values())
            mask = np.zeros(len(rows), dtype=bool)
            mask[at] = True
            mask = pa.array(mask)
            clean = pc.if_else(mask, pa.scalar(b"", pa.large_binary()), binary).cast(pa.large_string())
            text, problem = pc.if_else(mask, pa.array(readable, pa.large_string()), clean), pa.array(reasons, pa.string())
        if self.array:
            problem = pa.repeat(JSON_ARRAY, len(rows))
        return pa.table({"line_no": pa.array(rows + 1), "text": text, "problem": problem})
