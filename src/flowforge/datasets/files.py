"""Tabular datasets from local files: samples ``x`` ``(N, D)`` with optional context ``(N, k)``.

Three formats, told apart by the file's suffix:

* ``.npz``: an array ``x`` ``(N, D)`` and, for conditional density estimation, an optional
  array ``context`` ``(N, k)`` (or ``(N,)`` for one context value). No other arrays.
* ``.npy``: one array ``(N, D)``.
* ``.csv``: numbers separated by commas, one sample a line. The first line is a header when
  none of its fields is a number (a leading ``#``, as ``numpy.savetxt`` writes, is allowed);
  other lines starting with ``#`` and blank lines are skipped.

``context_columns`` (indices, or header names for a CSV file) splits columns of ``x`` off as
the context, for ``.csv`` and ``.npy`` files and ``.npz`` files without a ``context`` array.
Files are read without pickle, and only regular files are read: a FIFO (whose opening would
block), device or directory is refused before it is opened (`check_file()`). An array
whose header declares more numbers than ``FLOWFORGE_MAX_ELEMENTS``
(`flowforge.runtime.limits`), or more bytes than the file holds, is refused before numpy
allocates it. Values become float32 and must be finite; the rows are
shuffled with ``seed`` and split 80/10/10 into train / validation / test (continuous data:
``levels`` is None).

Examples:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
    >>> rng = np.random.default_rng(0)
    >>> c = rng.uniform(-1, 1, (100, 1))
    >>> np.savez(path, x=np.hstack([c, c]) + 0.1 * rng.normal(size=(100, 2)), context=c)
    >>> data = load_file(path)
    >>> len(data.train), data.train.context.shape
    (80, torch.Size([80, 1]))
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowforge.datasets.base import Dataset, Split, split_three
from flowforge.runtime.limits import BudgetError, check_elements

SUFFIXES = (".npz", ".npy", ".csv")
MIN_ROWS = 10  # so that each of the 80/10/10 splits holds at least one row

ColumnSpec = str | int | Sequence[int | str] | None


def is_data_file(name: str | os.PathLike) -> bool:
    """Whether ``name`` refers to a data file rather than a named dataset: it ends in
    ``.npz``, ``.npy`` or ``.csv`` (in any case), or it is an existing file."""
    path = Path(name)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def check_file(path: str | os.PathLike) -> None:
    """Refuse, before opening it, a data file that is missing (``FileNotFoundError``) or not
    a regular file: a FIFO (whose opening would block), a device, a socket or a directory
    (``ValueError``). A symbolic link to a regular file is followed."""
    from flowforge.runtime.files import check_regular_file

    check_regular_file(path, what=f"data file {path}")


def load_file(
    path: str | os.PathLike,
    n: int | None = None,
    seed: int = 0,
    context_columns: ColumnSpec = None,
) -> Dataset:
    """The dataset in the file ``path`` (see the module's description), its splits fixed by
    ``seed``. ``n`` keeps a random subset of ``n`` rows (chosen with ``seed``) before
    splitting. Every problem with the file is a one-line ``ValueError`` (or
    ``FileNotFoundError``) naming the file."""
    x, context = read_arrays(path, context_columns)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not MIN_ROWS <= n <= len(x):
            raise ValueError(f"{path}: n must be an integer in [{MIN_ROWS}, {len(x)}], got {n!r}")
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))[:n]
        keep = keep.sort().values
        x = x[keep]
        context = None if context is None else context[keep]
    if len(x) < MIN_ROWS:
        raise ValueError(f"{path}: needs at least {MIN_ROWS} rows to split, got {len(x)}")
    dim = x.shape[1]
    joined = x if context is None else torch.cat([x, context], dim=1)
    parts = split_three(joined, seed=seed)
    splits = [
        Split(
            part.x[:, :dim].contiguous(),
            context=None if context is None else part.x[:, dim:].contiguous(),
        )
        for part in parts
    ]
    return Dataset(str(path), *splits)


def read_arrays(
    path: str | os.PathLike, context_columns: ColumnSpec = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samples ``(N, D)`` and the context ``(N, k)`` or None in a data file, float32 and
    checked, in the file's order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported data file type {path.suffix!r}; expected .npz, .npy or .csv"
        )
    check_file(path)
    header: list[str] | None = None
    context = None
    if suffix == ".npz":
        x, context = _read_npz(path)
        if context is not None and context_columns is not None:
            raise ValueError(
                f"{path} has a 'context' array; context_columns is for files without one"
            )
    elif suffix == ".npy":
        x = _read_npy(path)
    else:
        x, header = read_csv(path)
    x = _two_dimensional(x, path, "x", allow_vector=False)
    if context_columns is not None:
        columns = parse_columns(context_columns, header, x.shape[1], path)
        rest = [i for i in range(x.shape[1]) if i not in columns]
        x, context = x[:, rest], x[:, columns]
    if context is not None:
        context = _two_dimensional(context, path, "context", allow_vector=True)
        if len(context) != len(x):
            raise ValueError(
                f"{path}: x has {len(x)} rows but context has {len(context)}; "
                "they must be paired row by row"
            )
    x_tensor = _finite_float32(x, path, "x")
    context_tensor = None if context is None else _finite_float32(context, path, "context")
    return x_tensor, context_tensor


def parse_columns(
    spec: ColumnSpec, header: Sequence[str] | None, width: int, path: str | os.PathLike = ""
) -> list[int]:
    """Column indices from ``spec``: comma-separated indices or header names (``"0,1"``,
    ``"age,height"``), an index, or a list of them. Negative indices count from the end."""
    where = f"{path}: " if str(path) else ""
    if isinstance(spec, str):
        items: list[int | str] = [item.strip() for item in spec.split(",")]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        items = [spec]
    else:
        items = list(spec)
    columns = []
    for item in items:
        if isinstance(item, str) and header is not None and item in header:
            index = header.index(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            index = item
        elif isinstance(item, str) and re.fullmatch(r"-?\d+", item):
            index = int(item)
        else:
            names = f"; the header names are {', '.join(header)}" if header else ""
            raise ValueError(
                f"{where}context column {item!r} is neither a column index nor a header name{names}"
            )
        if not -width <= index < width:
            raise ValueError(f"{where}context column {item!r} is out of range for {width} columns")
        index %= width
        if index in columns:
            raise ValueError(f"{where}context column {item!r} is given twice")
        columns.append(index)
    if not columns:
        raise ValueError(f"{where}context_columns names no columns")
    if len(columns) == width:
        raise ValueError(f"{where}every column is a context column; none is left for x")
    return columns


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _check_npz_arrays(path: Path) -> None:
    """Refuse an ``x`` or ``context`` array of an .npz archive whose header declares more
    numbers than ``FLOWFORGE_MAX_ELEMENTS`` or more bytes than the archive holds for it
    (numpy would allocate the declared size before reading)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename not in ("x.npy", "context.npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                offset = member.tell()
            _check_declared(path, info.filename[:-4], shape, dtype, info.file_size - offset)


def _check_declared(path: Path, name: str, shape: tuple, dtype: np.dtype, size: int) -> None:
    count = math.prod(shape)
    check_elements(count, f"{path}: array {name!r} of shape {tuple(shape)}")
    if not dtype.hasobject and count * dtype.itemsize > size:
        raise ValueError(
            f"array {name!r} declares shape {tuple(shape)} of {count * dtype.itemsize:,} bytes, "
            f"but only {size:,} follow (a truncated file?)"
        )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        _check_npz_arrays(path)
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array (an .npy file?)")
            keys = set(archive.files)
            if "x" not in keys or keys - {"x", "context"}:
                found = ", ".join(repr(k) for k in sorted(keys)) or "none"
                raise ValueError(
                    f"expected an array 'x' and optionally 'context', found arrays {found}"
                )
            x = archive["x"]
            context = archive["context"] if "context" in keys else None
    except BudgetError:
        raise
    except Exception as error:  # zipfile, zlib and numpy's header parser raise many kinds
        raise ValueError(f"{path} is not a usable .npz file: {_first_line(error)}") from None
    return x, context


def _read_npy(path: Path) -> np.ndarray:
    """The array of an .npy file, mapped first (so that a header declaring more than the file
    holds is refused, not allocated), checked against ``FLOWFORGE_MAX_ELEMENTS``, then read."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(array, np.ndarray):
            array.close()  # an NpzFile
            raise ValueError("it is an .npz archive")
        check_elements(array.size, f"{path}: an array of shape {array.shape}")
        array = np.array(array)
    except BudgetError:
        raise
    except Exception as error:  # numpy's header parser raises SyntaxError, TokenError, ...
        raise ValueError(f"{path} is not a usable .npy file: {_first_line(error)}") from None
    return array


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The numbers in a CSV file ``(N, D)`` and its header's names (None without one). The
    file is checked first to be a regular file (see `check_file()`)."""
    check_file(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read as text: {_first_line(error)}") from None
    header: list[str] | None = None
    rows: list[list[float]] = []
    first = True
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        fields = [field.strip() for field in fields]
        if not any(fields):
            continue  # a blank line
        commented = fields[0].startswith("#")
        if first:
            first = False
            names = [fields[0].lstrip("#").strip(), *fields[1:]] if commented else fields
            if not any(_is_number(name) for name in names):
                header = names
                continue
        if commented:
            continue
        if rows and len(fields) != len(rows[0]):
            raise ValueError(
                f"{path} line {number}: {len(fields)} values, but earlier rows have {len(rows[0])}"
            )
        try:
            rows.append([float(field) for field in fields])
        except ValueError:
            column = next(i for i, field in enumerate(fields) if not _is_number(field))
            raise ValueError(
                f"{path} line {number}, column {column + 1}: {fields[column]!r} is not a number"
            ) from None
    if not rows:
        raise ValueError(f"{path} holds no rows of numbers")
    if header is not None and len(header) != len(rows[0]):
        raise ValueError(
            f"{path}: the header names {len(header)} columns but the rows have {len(rows[0])}"
        )
    return np.asarray(rows, dtype=np.float64), header


def _two_dimensional(array: np.ndarray, path: Path, name: str, allow_vector: bool) -> np.ndarray:
    """``array`` as ``(N, width)`` with a real number type; ``(N,)`` is one column if allowed."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {name} must hold numbers, got dtype {array.dtype}")
    if allow_vector and array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        expected = "(N, D) or (N,)" if allow_vector else "(N, D)"
        raise ValueError(
            f"{path}: {name} must be a 2-D array {expected}, got shape {tuple(array.shape)}"
        )
    return array


def _finite_float32(array: np.ndarray, path: Path, name: str) -> torch.Tensor:
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, caught
        values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    bad = ~torch.isfinite(values).all(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{path}: {name} has NaN or infinite values (as float32) in {int(bad.sum())} rows, "
            f"the first at row {row}"
        )
    return values


__all__ = ["SUFFIXES", "is_data_file", "load_file", "parse_columns", "read_arrays", "read_csv"]
