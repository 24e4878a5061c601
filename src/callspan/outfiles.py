"""Creating output files without writing through symbolic links.

Opening ``callspan-traces.jsonl`` with ``open(path, "w")`` truncates whatever a symbolic link of
that name points to (a link checked into a repository, left in a shared directory). Instead, the
output is written to a new file in the same directory (created exclusively, never through a
link) which is renamed onto the path: an existing file or link there is replaced, a link's target
is left untouched. Devices and pipes (``/dev/stdout``, ``/dev/null``, ``/dev/fd/3``, a FIFO) are
written into as they are: nothing can be truncated there. So are the names of this process's
descriptors (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``) given as they are, whatever they
lead to: ``-o /dev/stdout > report.txt`` writes the file the shell opened (a new file renamed
onto ``/dev/stdout`` would replace the system's link). A link to a pipe or device outside
``/dev`` and ``/proc`` is refused (who made it could be reading).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from typing import IO

from callspan.errors import CallspanError

_SYSTEM_LINK_PREFIXES = ("/dev/", "/proc/")
# Names of an open descriptor: the name given, not a link's target (a link of that name planted
# elsewhere is not trusted to lead to a regular file).
_DESCRIPTOR_NAME = re.compile(r"/dev/(?:stdout|stderr|fd/\d+)|/proc/(?:self|thread-self|\d+)/fd/\d+")
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW


@dataclass(slots=True)
class Opened:
    """An output stream and what was at its path before, for telling the user."""

    stream: IO[str]
    replaced_link: str | None = None  # the target of a symbolic link replaced by the new file


def _error(path: str, exc: OSError) -> CallspanError:
    return CallspanError(f"{path}: cannot write: {exc.strerror or exc}")


def _special_target(path: str) -> bool:
    """Whether ``path`` leads to an existing device, pipe or socket, or names a descriptor (to be
    written into as is)."""
    if _DESCRIPTOR_NAME.fullmatch(os.path.normpath(path)):
        return True
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return False  # absent, or a dangling link
    if stat.S_ISREG(target.st_mode) or stat.S_ISDIR(target.st_mode):
        return False
    if os.path.islink(path) and not os.readlink(path).startswith(_SYSTEM_LINK_PREFIXES):
        raise CallspanError(f"{path}: a symbolic link to a pipe, socket or device outside /dev: not written "
                            "(remove it, or name its target)")
    return True


def _new_file_beside(path: str, flags: int = 0) -> tuple[int, str, str | None] | int:
    """(descriptor, name) of a new file beside ``path``, with the target of a link it will replace;
    or only a descriptor of ``path`` itself, truncated, when the directory refuses new files."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        before = None
    link = os.readlink(path) if before is not None and stat.S_ISLNK(before.st_mode) else None
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, _CREATE_FLAGS | flags, 0o666)
    except PermissionError:
        if before is None or link is not None or not stat.S_ISREG(before.st_mode):
            raise
        # A directory we may not create files in, holding a file we may write: truncate that file
        # in place (O_NOFOLLOW: it is not a link, checked above, nor made one since).
        return os.open(path, os.O_WRONLY | os.O_TRUNC | _NO_FOLLOW | flags)
    if before is not None and stat.S_ISREG(before.st_mode):
        os.fchmod(fd, stat.S_IMODE(before.st_mode))  # keep the replaced file's permissions
    return fd, temporary, link


def _rename(fd: int, temporary: str, path: str) -> None:
    try:
        os.replace(temporary, path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _stream(fd: int) -> IO[str]:
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n")


def open_output(path: str, append: bool = False) -> Opened:
    """A text stream writing ``path`` from its start (for output written as it comes: the new
    file takes the path at once); with ``append``, opened in append mode (O_APPEND: each write
    lands whole at the end, also one from a forked child). See the module's docstring."""
    try:
        if _special_target(path):
            return Opened(open(path, "a" if append else "w", encoding="utf-8", newline="\n"))  # noqa: SIM115
        created = _new_file_beside(path, os.O_APPEND if append else 0)
        if isinstance(created, int):
            return Opened(_stream(created))
        fd, temporary, link = created
        _rename(fd, temporary, path)
        return Opened(_stream(fd), link)
    except IsADirectoryError:
        raise CallspanError(f"{path}: is a directory") from None
    except OSError as exc:
        raise _error(path, exc) from None


def write_output(path: str, text: str) -> str | None:
    """Write ``text`` to ``path`` whole (renamed onto the path once written: a reader never sees
    part of it); returns the target of a symbolic link it replaced. See the module's docstring."""
    try:
        if _special_target(path):
            with open(path, "w", encoding="utf-8", newline="\n") as stream:
                stream.write(text)
            return None
        created = _new_file_beside(path)
        if isinstance(created, int):
            with _stream(created) as stream:
                stream.write(text)
            return None
        fd, temporary, link = created
        try:
            with _stream(fd) as stream:
                stream.write(text)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return link
    except IsADirectoryError:
        raise CallspanError(f"{path}: is a directory") from None
    except OSError as exc:
        raise _error(path, exc) from None
