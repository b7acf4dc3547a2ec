"""Reading a file a user gave, without trusting it: regular files only, inside their directory,
of bounded size, and errors of one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_TEXT_BYTES = 4 * 2**20  # model.json and config.yaml larger than this are refused


class RunFileError(ValueError):
    """A file of a saved model or run directory that cannot be used: not a regular file, a
    link out of its directory, too large, or malformed."""


def one_line(error: BaseException) -> str:
    """An error's message on one line of at most 300 characters (its type if it has none)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular_file(
    path: str | os.PathLike,
    *,
    inside: str | os.PathLike | None = None,
    max_bytes: int | None = None,
    what: str | None = None,
) -> os.stat_result:
    """The ``os.stat`` of ``path``, checked, without opening it (opening a FIFO blocks), to be
    a regular file (a symbolic link to one is followed), inside the directory ``inside`` if
    given (a link out of it is refused) and of at most ``max_bytes`` bytes if given.

    Raises ``FileNotFoundError`` if it does not exist, else `RunFileError` for a FIFO,
    device, socket or directory, a broken or looping link, a link out of ``inside``, a file
    that is too large or cannot be looked at. ``what`` names it in the message (default: the
    path)."""
    path = Path(path)
    name = what or str(path)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} does not exist") from None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, no permission
        raise RunFileError(f"{name} cannot be looked at: {one_line(error)}") from None
    try:
        info = os.stat(path)
        real = path.resolve(strict=True)
        home = None if inside is None else Path(inside).resolve(strict=True)
    except PermissionError as error:
        raise RunFileError(f"{name} cannot be looked at: {one_line(error)}") from None
    except (OSError, RuntimeError) as error:
        reason = one_line(error)
        raise RunFileError(f"{name} is a broken or looping symbolic link ({reason})") from None
    if home is not None and not real.is_relative_to(home):
        raise RunFileError(
            f"{name} is a symbolic link to {real}, outside {home}; only files inside the "
            "directory are read"
        )
    if not stat.S_ISREG(info.st_mode):
        raise RunFileError(f"{name} is {_kind(info.st_mode)}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise RunFileError(
            f"{name} is {info.st_size:,} bytes, above the limit of {max_bytes:,} for this file"
        )
    return info


def read_text(
    path: str | os.PathLike,
    *,
    inside: str | os.PathLike | None = None,
    max_bytes: int = MAX_TEXT_BYTES,
    what: str | None = None,
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes (see
    `check_regular_file()`, whose errors it raises; text that is not UTF-8, or a file
    that turns into something else while it is opened, is a `RunFileError`)."""
    name = what or str(path)
    check_regular_file(path, inside=inside, max_bytes=max_bytes, what=what)
    try:
        # Non-blocking, so that a FIFO put in the file's place after the check cannot hang.
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise RunFileError(f"{name} cannot be read: {one_line(error)}") from None
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise RunFileError(f"{name} is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RunFileError(f"{name} is larger than the limit of {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(
            f"{name} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
