"""Options checked against one schema, whoever gives them: a keyword of ``ff.fit``, a key
of a YAML config file or a command-line flag.

An `Option` has a `Kind`, which says which values it takes (``accepts``), how a string
becomes one (``read``: a flag's text, or a quoted YAML scalar such as ``"1e-3"``) and what
was expected, in the spelling of the place the value came from (``None`` in Python,
``null`` in YAML). Every refusal is one line::

    >>> LR = Option(number(0.0, strict=True))
    >>> LR.check("lr", 0.0)
    Traceback (most recent call last):
    ValueError: lr must be a positive number, got 0.0
    >>> LR.read("1e-3")
    0.001
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Spelling = Literal["python", "yaml"]


@dataclass(frozen=True)
class Kind:
    """What an option takes.

    ``expected(spelling)`` says it in words; ``accepts(value)`` tests a value;
    ``read(text)`` turns a string into a value (raising ``ValueError``); ``normal(value)``
    is the accepted value in its one form (integers given for a float become floats);
    ``values``: the values of a choice, listed in its words."""

    expected: Callable[[Spelling], str]
    accepts: Callable[[Any], bool]
    read: Callable[[str], Any]
    normal: Callable[[Any], Any] = lambda value: value
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Option:
    """An option of a ``kind``; ``nullable``: None (YAML's null) is a value too."""

    kind: Kind
    nullable: bool = False

    def expected(self, spelling: Spelling = "python") -> str:
        """What the option takes, in words (``"a positive number or None"``)."""
        none = "None" if spelling == "python" else "null"
        if self.kind.values is not None:  # a choice: "cosine, plateau or None"
            return _one_of([*self.kind.values, *([None] if self.nullable else [])], spelling)
        return self.kind.expected(spelling) + (f" or {none}" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        return (self.nullable and value is None) or self.kind.accepts(value)

    def check(self, name: str, value: Any) -> Any:
        """``value`` in its normal form, or a ``ValueError``: "NAME must be ..., got ..."."""
        if not self.accepts(value):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")
        return None if value is None else self.kind.normal(value)

    def read(self, text: str) -> Any:
        """The value that ``text`` spells (a flag's argument), checked; else a ``ValueError``
        "expected ..., got 'TEXT'"."""
        try:
            value = self.kind.read(text)
        except (ValueError, OverflowError):
            value = _UNREAD
        if value is _UNREAD or not self.kind.accepts(value):
            raise ValueError(f"expected {self.kind.expected('yaml')}, got {text!r}")
        return self.kind.normal(value)


_UNREAD = object()


def check(schema: Mapping[str, Option], **values: Any) -> dict[str, Any]:
    """Each of ``values`` checked by its option of ``schema`` (`Option.check`), in normal
    form."""
    return {name: schema[name].check(name, value) for name, value in values.items()}


# ----------------------------------------------------------------------------- kinds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


def integer(minimum: int | None = None, maximum: int | None = None, what: str = "") -> Kind:
    """Integers in [``minimum``, ``maximum``] (either end open when None)."""
    if not what:
        what = {None: "an integer", 0: "an integer >= 0", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
    return Kind(
        expected=lambda spelling: what,
        accepts=lambda v: (
            _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
        ),
        read=int,
    )


def number(
    minimum: float | None = None,
    strict: bool = False,
    below: float | None = None,
    what: str = "",
) -> Kind:
    """Finite numbers >= ``minimum`` (> it with ``strict``) and < ``below``; integers
    become floats."""
    if not what:
        if minimum == 0 and strict:
            what = "a positive number"
        elif minimum is None:
            what = "a finite number"
        else:
            what = f"a finite number {'>' if strict else '>='} {minimum:g}"
    return Kind(
        expected=lambda spelling: what,
        accepts=lambda v: (
            _is_number(v)
            and (minimum is None or v > minimum or (not strict and v == minimum))
            and (below is None or v < below)
        ),
        read=float,
        normal=float,
    )


def choice(*values: Any, spelled: Mapping[str, Any] | None = None) -> Kind:
    """One of ``values`` (strings or booleans); ``spelled`` maps other texts to them
    (``{"true": True}``)."""
    words = {**{str(v): v for v in values if isinstance(v, str)}, **(spelled or {})}

    def read(text: str) -> Any:
        if text.lower() not in words:
            raise ValueError(text)
        return words[text.lower()]

    return Kind(
        expected=lambda spelling: _one_of(values, spelling),
        # `is` for booleans: 1 == True, but 1 is not a compile mode
        accepts=lambda v: any(v is c or (isinstance(c, str) and v == c) for c in values),
        read=read,
        values=values,
    )


def spelled(value: Any, spelling: Spelling = "yaml") -> str:
    """A value as Python (``repr``) or YAML (``true``, ``null``, a bare word) writes it."""
    if spelling == "python":
        return repr(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _one_of(values: Sequence[Any], spelling: Spelling) -> str:
    """``"a, b or c"``, each value spelled as ``spelling`` writes it."""
    shown = [spelled(v, spelling) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def text(what: str) -> Kind:
    """Any string."""
    return Kind(expected=lambda spelling: what, accepts=lambda v: isinstance(v, str), read=str)


BOOLEAN = choice(True, False, spelled={"true": True, "false": False})


def listed(item: Kind, what: str, length: int | None = None) -> Kind:
    """A non-empty list of ``item`` values (``length`` of them if given), written ``a,b`` on
    the command line."""

    def accepts(value: Any) -> bool:
        return (
            isinstance(value, list | tuple)
            and len(value) > 0
            and (length is None or len(value) == length)
            and all(item.accepts(v) for v in value)
        )

    return Kind(
        expected=lambda spelling: what,
        accepts=accepts,
        read=lambda text: [item.read(part) for part in text.split(",")],
        normal=lambda value: [item.normal(v) for v in value],
    )


def mapping(what: str) -> Kind:
    """A mapping (of further arguments); not read from one string."""

    def read(text: str) -> Any:
        raise ValueError(text)

    return Kind(expected=lambda spelling: what, accepts=lambda v: isinstance(v, dict), read=read)


def custom(what: str, accepts: Callable[[Any], bool], read: Callable[[str], Any] = str) -> Kind:
    """A kind of its own: ``accepts`` tests a value."""
    return Kind(expected=lambda spelling: what, accepts=accepts, read=read)


__all__ = [
    "BOOLEAN",
    "Kind",
    "Option",
    "check",
    "choice",
    "custom",
    "integer",
    "listed",
    "mapping",
    "number",
    "spelled",
    "text",
]
