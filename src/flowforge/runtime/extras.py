"""The optional extras: what each one installs, whether it is here, and the one-line error
of a feature whose extra is missing.

``pip install flowforge`` gives every flow, the training loops and the command line; the
extras of ``pyproject.toml`` add the rest:

| extra | brings | for |
|---|---|---|
| ``pyro`` | Pyro | `flowforge.interop.pyro`, ``Flow.as_pyro`` |
| ``sbi`` | sbi | `flowforge.interop.sbi` |
| ``tensorboard`` | TensorBoard | ``fit(tensorboard=...)``, ``--tensorboard`` |
| ``bench`` | nflows, normflows, zuko, Pyro | the peers of ``python -m benchmarks`` |
| ``docs`` | MkDocs, Material, mkdocstrings | ``mkdocs build`` of the site |
| ``dev`` | pytest, hypothesis, ruff, Sybil | the test suite and the linters |

A module or feature that needs an extra raises `MissingExtraError`, an ``ImportError`` whose
message is one line: what needs it and the command that installs it.

Examples:
    >>> from flowforge.runtime import extras
    >>> sorted(extras.EXTRAS)
    ['bench', 'dev', 'docs', 'ot', 'pyro', 'sbi', 'tensorboard']
    >>> str(extras.MissingExtraError("flowforge.interop.sbi", "sbi"))
    "flowforge.interop.sbi needs the sbi extra: pip install 'flowforge[sbi]'"
"""

from __future__ import annotations

import importlib.util

# The modules each extra makes importable (their import names, not their distributions');
# tests/test_extras.py checks the keys against pyproject.toml's optional-dependencies.
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("nflows", "normflows", "zuko", "pyro", "torchcfm"),
    "dev": ("pytest", "hypothesis", "sybil"),
    "docs": ("mkdocs", "material", "mkdocstrings"),
    "ot": ("ot",),
    "pyro": ("pyro",),
    "sbi": ("sbi",),
    "tensorboard": ("tensorboard",),
}


class MissingExtraError(ImportError):
    """``module`` needs the optional ``extra``, which is not installed.

    Args:
        module: what needs it: a module's name or a feature (``"fit(tensorboard=...)"``).
        extra: the name of the extra in ``pip install 'flowforge[extra]'``.
    """

    def __init__(self, module: str, extra: str) -> None:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
        super().__init__(f"{module} needs the {extra} extra: {install_command(extra)}")
        self.module, self.extra = module, extra


def install_command(extra: str) -> str:
    """``pip install 'flowforge[extra]'``: the command that installs ``extra``."""
    return f"pip install 'flowforge[{extra}]'"


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (``[]``: it is installed)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def installed(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported here."""
    return not missing(extra)
