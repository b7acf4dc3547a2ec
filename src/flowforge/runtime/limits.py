"""Limits on what a file, a flag or an argument may make flowforge allocate, checked before
anything is allocated.

A model description from someone else (``model.json``), a config file or a typo
(``--n 1000000000``) can ask for more memory than the machine has; flowforge refuses such a
request with one line naming the size, the limit and how to raise it:

- ``FLOWFORGE_MAX_PARAMETERS`` (default 1,000,000,000, 4 GB in float32): parameters and
  buffers of a model built from a description;
- ``FLOWFORGE_MAX_ELEMENTS`` (default 2**31, 8 GB in float32): the numbers in one array
  made at a user's request (samples drawn, toy data generated).

The environment variables are read at every check, so a running program can raise them.

Examples:
    >>> check_elements(1000 * 2, "samples")
    >>> try:
    ...     check_elements(10**12, "samples", limit=10**9)
    ... except BudgetError as error:
    ...     print(str(error)[:61])
    samples would hold 1,000,000,000,000 numbers, above the limit
"""

from __future__ import annotations

import os

DEFAULT_MAX_PARAMETERS = 1_000_000_000
DEFAULT_MAX_ELEMENTS = 2**31


class BudgetError(ValueError):
    """A request above a size limit (see `flowforge.runtime.limits`)."""


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise BudgetError(f"{variable} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise BudgetError(f"{variable} must be a positive integer, got {text!r}")
    return value


def max_parameters() -> int:
    """The current limit on a model's parameters and buffers."""
    return _limit("FLOWFORGE_MAX_PARAMETERS", DEFAULT_MAX_PARAMETERS)


def max_elements() -> int:
    """The current limit on the numbers in one requested array."""
    return _limit("FLOWFORGE_MAX_ELEMENTS", DEFAULT_MAX_ELEMENTS)


def check_parameters(count: int, what: str, limit: int | None = None) -> None:
    """Raise `BudgetError` if ``what`` has more than ``limit`` parameters (default:
    `max_parameters()`)."""
    limit = max_parameters() if limit is None else limit
    if count > limit:
        raise BudgetError(
            f"{what} would have {count:,} parameters, above the limit of {limit:,} "
            "(FLOWFORGE_MAX_PARAMETERS); raise it if this is intended"
        )


def check_elements(count: int, what: str, limit: int | None = None) -> None:
    """Raise `BudgetError` if an array for ``what`` would hold more than ``limit``
    numbers (default: `max_elements()`)."""
    limit = max_elements() if limit is None else limit
    if count > limit:
        raise BudgetError(
            f"{what} would hold {count:,} numbers, above the limit of {limit:,} "
            "(FLOWFORGE_MAX_ELEMENTS); raise it if this is intended"
        )


__all__ = [
    "BudgetError",
    "check_elements",
    "check_parameters",
    "max_elements",
    "max_parameters",
]
