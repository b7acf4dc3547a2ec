"""Atomic, durable file writes: a file is either its old content or its new one, never a mix.

Each write goes to a temporary file in the destination's directory, is flushed to the disk
(``fsync``), renamed over the destination (``os.replace``, atomic on POSIX and Windows) and
the directory entry is flushed too. A write that fails or is interrupted removes its
temporary file; `remove_temporaries()` removes those in flight (for a hard exit on a
second signal) and `remove_orphans()` those that a killed process left behind.

Examples:
    >>> from pathlib import Path
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = write_text(path, "hello\\n")
    >>> path.read_text()
    'hello\\n'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_MARK = ".tmp-"  # temporary names are ".{stem}.tmp-{random}{suffix}"

_in_flight: set[Path] = set()


def _default_mode() -> int:
    """The mode ``open`` gives a new file here: ``0o666`` less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to the disk, where the platform allows it."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write in place of ``path``; on leaving the block it is flushed and
    renamed over ``path``, or removed if the block raised.

    The temporary file keeps ``path``'s suffix, so writers that pick a format by extension
    (``numpy.save``, ``matplotlib``'s ``savefig``) write the right one::

        with replacing(run / "samples.npy") as tmp:
            numpy.save(tmp, samples)
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    handle, name = tempfile.mkstemp(
        dir=directory, prefix=f".{path.stem}{TEMPORARY_MARK}", suffix=path.suffix
    )
    os.close(handle)
    temporary = Path(name)
    _in_flight.add(temporary)
    with contextlib.suppress(OSError):  # mkstemp makes it private (0600); give the usual mode
        mode = path.stat().st_mode & 0o7777 if path.exists() else _default_mode()
        os.chmod(temporary, mode)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
        _fsync_directory(directory)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        _in_flight.discard(temporary)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; return ``path``."""
    path = Path(path)
    with replacing(path) as temporary:
        temporary.write_bytes(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably; return ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def remove_temporaries() -> None:
    """Remove the temporary files of writes in flight (before a hard exit)."""
    for temporary in list(_in_flight):
        with contextlib.suppress(OSError):
            temporary.unlink()
        _in_flight.discard(temporary)


def remove_orphans(directory: str | Path) -> list[Path]:
    """Remove temporary files that a killed writer left in ``directory`` (and its ``plots/``);
    return their paths. Files of writes in flight in this process are kept."""
    removed = []
    directory = Path(directory)
    for folder in (directory, directory / "plots"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            orphan = entry.name.startswith(".") and TEMPORARY_MARK in entry.name
            legacy = entry.name.endswith(".tmp")  # flowforge <= 0.1 wrote NAME.tmp
            if (orphan or legacy) and entry.is_file() and entry not in _in_flight:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


__all__ = ["remove_orphans", "remove_temporaries", "replacing", "write_bytes", "write_text"]
