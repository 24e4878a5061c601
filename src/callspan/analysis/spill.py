"""Spilling per-call and per-span arrays to disk, so that the analyzer's memory stays bounded.

The model keeps one entry per call (``CallColumns``) and per span (``RowColumns``, link arrays)
in memory up to a budget; beyond it, ``Model.spill`` moves them into a temporary directory:

- each function's calls as *runs* sorted by start time (``Runs``, one file for all functions).
  The cache replay needs a function's calls in start order: ``CallSource.blocks`` merges its runs
  back (``merged_pieces``), piece by piece, into exactly the order a stable sort of all of them
  would give (ties in arrival order);
- rows and links into *partitions* by a key (``Partitions``): every row of a trace lands in one
  partition, so stacks resolve one partition at a time. A partition too big to load within the
  budget is split again by the next digit of its key when it is read back.

Files are raw typed-array bytes (native byte order: they never leave this process and its
workers) and are removed when the model is closed or collected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from operator import mod
from typing import Any, TypeAlias

PIECE = 1 << 16  # most entries per column read from a run at a time
MERGE_BYTES = 16 << 20  # what the pieces of all runs being merged may take together
PARTS = 16  # partitions per level
SORT_SLICE = 1 << 16  # entries sorted at a time when spilling


class SpillError(Exception):
    """Spilling to disk failed (no space, no such directory, ...): the message says where and why."""


def _failed(path: str, exc: OSError) -> SpillError:
    return SpillError(f"{path}: cannot spill to disk: {exc.strerror or exc}")


class SpillDir:
    """A temporary directory, removed when closed, collected, or at exit (by its creating process)."""

    def __init__(self, parent: str | None = None) -> None:
        try:
            self.path = tempfile.mkdtemp(prefix="callspan-analyze-", dir=parent)
        except OSError as exc:
            raise _failed(parent or tempfile.gettempdir(), exc) from None
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid())
        self._files = 0

    def new_file(self, name: str) -> str:
        self._files += 1
        return os.path.join(self.path, f"{self._files}-{name}.bin")

    def close(self) -> None:
        self._finalizer()


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked worker
        shutil.rmtree(path, ignore_errors=True)


class AppendFile:
    """An append-only file of array bytes, read back by offset (``os.pread``: no shared position)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise _failed(path, exc) from None
        self._closer = weakref.finalize(self, os.close, self._fd)

    def write(self, columns: Sequence[array[Any]]) -> int:
        """Append ``columns`` one after another; returns the offset of the first."""
        offset = self.size
        try:
            for column in columns:
                data = memoryview(column).cast("B")
                written = 0
                while written < len(data):
                    written += os.write(self._fd, data[written:])
        except OSError as exc:
            raise _failed(self.path, exc) from None
        self.size += sum(len(c) * c.itemsize for c in columns)
        return offset

    def close(self) -> None:
        self._closer()


def open_read(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise _failed(path, exc) from None


def read_array(path: str, typecode: str, offset: int, count: int, fd: int | None = None) -> array[Any]:
    out = array(typecode)
    nbytes = count * out.itemsize
    if not nbytes:
        return out
    own = fd is None
    handle = open_read(path) if fd is None else fd
    try:
        try:
            data = os.pread(handle, nbytes, offset)
        finally:
            if own:
                os.close(handle)
    except OSError as exc:
        raise _failed(path, exc) from None
    if len(data) != nbytes:
        raise SpillError(f"{path}: spill file shorter than written (removed while in use?)")
    out.frombytes(data)
    return out


def sort_columns_py(columns: Sequence[array[Any]], key: Sequence[int]) -> list[array[Any]]:
    """``columns`` reordered by a stable sort on ``key`` (one of them, or a parallel array)."""
    if any(len(c) != len(key) for c in columns):
        raise ValueError("sort_columns: every column must be as long as the key")
    order = sorted(range(len(key)), key=key.__getitem__)
    return [array(c.typecode, map(c.__getitem__, order)) for c in columns]


SortColumns: TypeAlias = "Callable[[Sequence[array[Any]], Sequence[int]], list[array[Any]]]"
SORT_COLUMNS: SortColumns | None = None
try:  # the same in C (setup.py builds it when a compiler is there): ~100x faster
    from callspan.analysis._columns import sort_columns as _compiled_sort_columns

    SORT_COLUMNS = _compiled_sort_columns
except ImportError:  # pragma: no cover - exercised where the extension is not built
    pass


def sort_columns(columns: Sequence[array[Any]], key: Sequence[int]) -> list[array[Any]]:
    """``columns`` reordered by a stable sort on ``key`` (compiled when built, else ``sort_columns_py``)."""
    if SORT_COLUMNS is not None:
        return SORT_COLUMNS(columns, key)
    return sort_columns_py(columns, key)


Run = tuple[int, int]  # (offset, count) of a set of columns written one after another


class Runs:
    """Reads runs of same-shaped column sets back from a spill file (by path: also in workers)."""

    __slots__ = ("path", "typecodes", "itemsizes")

    def __init__(self, path: str, typecodes: str) -> None:
        self.path = path
        self.typecodes = typecodes
        self.itemsizes = [array(t).itemsize for t in typecodes]

    def read(self, run: Run, start: int, count: int, fd: int) -> list[array[Any]]:
        """Entries [start, start + count) of every column of ``run``."""
        offset, total = run
        out = []
        for typecode, size in zip(self.typecodes, self.itemsizes, strict=True):
            out.append(read_array(self.path, typecode, offset + start * size, count, fd))
            offset += total * size
        return out


class RunCursor:
    """One run, read a piece at a time."""

    __slots__ = ("run", "number", "next", "columns", "i")

    def __init__(self, run: Run, number: int) -> None:
        self.run = run
        self.number = number
        self.next = 0  # first entry not read yet
        self.columns: list[array[Any]] = []
        self.i = 0  # first entry of ``columns`` not taken yet

    def exhausted(self) -> bool:
        return self.next >= self.run[1] and self.i >= len(self.columns[0] if self.columns else ())


def merged_pieces(runs: Runs, run_list: list[Run], tail: list[array[Any]] | None,
                  key_column: int, piece: int = 0) -> Iterator[list[array[Any]]]:
    """The entries of ``run_list`` (each sorted on ``key_column``) then ``tail`` (sorted too), in blocks.

    Each block's entries all come before the next block's in the order of a stable sort of the
    concatenation of the runs on the key (equal keys: earlier run first, then position in run);
    a block is its runs' slices one after another (each sorted), stable-sorted by its consumer.
    """
    # Many runs (a long input spilled many times): smaller pieces, so that all of them together
    # stay within MERGE_BYTES.
    piece = piece or max(256, min(PIECE, MERGE_BYTES // max(1, len(run_list)) // sum(runs.itemsizes)))
    cursors = [RunCursor(run, n) for n, run in enumerate(run_list) if run[1]]
    if tail is not None and len(tail[0]):
        in_memory = RunCursor((0, len(tail[0])), len(run_list))  # the last run, already loaded
        in_memory.columns = tail
        in_memory.next = len(tail[0])
        cursors.append(in_memory)
    if not cursors:
        return
    fd = open_read(runs.path) if run_list else -1
    try:
        while cursors:
            for c in cursors:
                if c.i >= len(c.columns[0] if c.columns else ()):
                    count = min(piece, c.run[1] - c.next)
                    c.columns = runs.read(c.run, c.next, count, fd)
                    c.next += count
                    c.i = 0
            # The frontier: the smallest (last key of the loaded piece, run number). Every entry not
            # loaded yet sorts after it; every entry taken below sorts before or at it.
            f_key, f_number = min((c.columns[key_column][-1], c.number) for c in cursors)
            taken: list[list[array[Any]]] = []
            for c in cursors:
                keys = c.columns[key_column]
                if c.number < f_number:
                    j = bisect_right(keys, f_key, c.i)
                elif c.number == f_number:
                    j = len(keys)
                else:
                    j = bisect_left(keys, f_key, c.i)
                if j > c.i:
                    taken.append([col[c.i:j] for col in c.columns])
                    c.i = j
            block = taken[0]
            for more in taken[1:]:
                for mine, theirs in zip(block, more, strict=True):
                    mine.extend(theirs)
            yield block
            cursors = [c for c in cursors if not c.exhausted()]
    finally:
        if fd >= 0:
            os.close(fd)


def all_pieces(runs: Runs, run_list: list[Run], piece: int = 0) -> Iterator[list[array[Any]]]:
    """Every entry of ``run_list``, in stored order, a piece at a time."""
    piece = piece or PIECE
    if not run_list:
        return
    fd = open_read(runs.path)
    try:
        for run in run_list:
            for start in range(0, run[1], piece):
                yield runs.read(run, start, min(piece, run[1] - start), fd)
    finally:
        os.close(fd)


class Partitions:
    """Column sets split into ``PARTS`` partitions by a non-negative integer key column."""

    def __init__(self, spill: SpillDir, name: str, typecodes: str, key_column: int, level: int = 0) -> None:
        self.spill = spill
        self.name = name
        self.typecodes = typecodes
        self.key_column = key_column
        self.level = level
        self.file = AppendFile(spill.new_file(f"{name}-{level}"))
        self.runs = Runs(self.file.path, typecodes)
        self.blocks: list[list[Run]] = [[] for _ in range(PARTS)]
        self.divisor = PARTS ** level
        self.row_bytes = sum(self.runs.itemsizes)

    def add(self, columns: Sequence[array[Any]]) -> None:
        n = len(columns[0])
        if not n:
            return
        if n > SORT_SLICE:
            for lo in range(0, n, SORT_SLICE):
                self.add([c[lo:lo + SORT_SLICE] for c in columns])
            return
        keys = columns[self.key_column]
        if self.divisor == 1:
            part = bytes(map(mod, keys, repeat(PARTS)))
        else:
            part = bytes(k // self.divisor % PARTS for k in keys)
        ordered = sort_columns(list(columns), part)
        lo = 0
        for p in range(PARTS):
            count = part.count(p)
            if count:
                self.blocks[p].append((self.file.write([c[lo:lo + count] for c in ordered]), count))
                lo += count

    def count(self, p: int) -> int:
        return sum(n for _, n in self.blocks[p])

    def parts(self, max_entries: int) -> Iterator[list[array[Any]]]:
        """Each non-empty partition's columns, whole, in arrival order; a partition bigger than
        ``max_entries`` is split by the next digits of its key, unless it holds one key only."""
        for p in range(PARTS):
            if not self.blocks[p]:
                continue
            if self.count(p) > max_entries and not self._one_key(p):
                sub = Partitions(self.spill, self.name, self.typecodes, self.key_column, self.level + 1)
                for columns in self.pieces(p):
                    sub.add(columns)
                yield from sub.parts(max_entries)
                sub.close()
                continue
            yield self.load(p)

    def _one_key(self, p: int) -> bool:
        keys = {value for columns in self.pieces(p) for value in (min(columns[self.key_column]),
                                                                 max(columns[self.key_column]))}
        return len(keys) == 1

    def load(self, p: int) -> list[array[Any]]:
        out = [array(t) for t in self.typecodes]
        for columns in all_pieces(self.runs, self.blocks[p]):
            for mine, theirs in zip(out, columns, strict=True):
                mine.extend(theirs)
        return out

    def pieces(self, p: int) -> Iterator[list[array[Any]]]:
        return all_pieces(self.runs, self.blocks[p])

    def close(self) -> None:
        self.file.close()
        try:
            os.unlink(self.file.path)
        except OSError:
            pass
