"""Decimal numbers within bounds, as a grammar.

llama.cpp's JSON-schema converter bounds integers but not numbers.  This module
builds the language of JSON numbers ``x`` with ``minimum <= x <= maximum`` (each
bound optional, inclusive or exclusive) so that a ``"type": "number"`` schema with
bounds is valid by construction.

The numbers produced are plain decimals: an optional ``-``, an integer part
without leading zeros, and an optional fraction; no exponent.  Every one of them
has at most 15 significant digits, which is what makes the bounds hold after
the JSON is parsed into a double (as ``json.loads`` and ``jsonschema`` do): two
different decimals of at most 15 significant digits are different doubles, in
the same order, so ``x > bound`` survives the conversion.  An exclusive bound
that needs more digits is first moved inwards to the nearest 15-digit decimal.

The result is a small regular-expression tree (:class:`Node`) that renders both
as a GBNF rule body and as a Python regular expression (for tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext

SIG_DIGITS = 15
"""The most significant digits a generated number has."""


class Node:
    """A regular-expression tree node."""

    def gbnf(self) -> str:
        raise NotImplementedError

    def regex(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Lit(Node):
    text: str

    def gbnf(self) -> str:
        return '"' + self.text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def regex(self) -> str:
        import re

        return re.escape(self.text)


@dataclass(frozen=True)
class Digits(Node):
    """One digit in ``lo..hi`` (characters ``'0'``-``'9'``)."""

    lo: int
    hi: int

    def gbnf(self) -> str:
        return f"[{self.lo}]" if self.lo == self.hi else f"[{self.lo}-{self.hi}]"

    def regex(self) -> str:
        return self.gbnf()


@dataclass(frozen=True)
class Rep(Node):
    """``item`` repeated ``lo`` to ``hi`` times."""

    item: Node
    lo: int
    hi: int

    def gbnf(self) -> str:
        if self.hi == 0:
            return '""'
        inner = self.item.gbnf()
        return inner if (self.lo, self.hi) == (1, 1) else f"{inner}{{{self.lo},{self.hi}}}"

    def regex(self) -> str:
        if self.hi == 0:
            return ""
        inner = self.item.regex()
        return inner if (self.lo, self.hi) == (1, 1) else f"(?:{inner}){{{self.lo},{self.hi}}}"


@dataclass(frozen=True)
class Seq(Node):
    items: tuple[Node, ...]

    def gbnf(self) -> str:
        parts = [i.gbnf() for i in self.items]
        parts = [p for p in parts if p != '""']
        return " ".join(parts) if parts else '""'

    def regex(self) -> str:
        return "".join(i.regex() for i in self.items)


@dataclass(frozen=True)
class Alt(Node):
    items: tuple[Node, ...]

    def gbnf(self) -> str:
        return "(" + " | ".join(i.gbnf() for i in self.items) + ")"

    def regex(self) -> str:
        return "(?:" + "|".join(i.regex() for i in self.items) + ")"


def seq(*items: Node) -> Node:
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Seq) else (item,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(items: list[Node]) -> Node | None:
    """The alternation of ``items`` (None when there are none: the empty language)."""
    unique: list[Node] = []
    for item in items:
        if item not in unique:
            unique.append(item)
    if not unique:
        return None
    return unique[0] if len(unique) == 1 else Alt(tuple(unique))


ANY_DIGIT = Digits(0, 9)
EMPTY = Seq(())


@dataclass(frozen=True)
class Bound:
    """A finite bound: ``value`` (a decimal) and whether it is included."""

    value: Decimal
    inclusive: bool


def _decimal(value: object, keyword: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{keyword} must be a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{keyword} must be finite, got {value!r}")
        return Decimal(repr(value))
    return Decimal(value)


def _significant_digits(value: Decimal) -> int:
    digits = value.normalize().as_tuple().digits
    return len(digits) if any(digits) else 0


def _tighten(bound: Bound, lower: bool) -> Bound:
    """An exclusive bound with more than 15 significant digits, moved inwards and made inclusive."""
    if bound.inclusive or _significant_digits(bound.value) <= SIG_DIGITS:
        return bound
    exponent = bound.value.adjusted() - SIG_DIGITS + 1
    with localcontext() as ctx:
        ctx.prec = 60
        quantum = Decimal(1).scaleb(exponent)
        moved = bound.value.quantize(quantum, rounding=ROUND_CEILING if lower else ROUND_FLOOR)
    return Bound(moved, True)


def bounds_of(schema: dict[str, object]) -> tuple[Bound | None, Bound | None]:
    """The (lower, upper) bounds a schema sets, either draft's spelling; None where unbounded."""
    lower: Bound | None = None
    upper: Bound | None = None
    draft4_exclusive_min = schema.get("exclusiveMinimum") is True
    draft4_exclusive_max = schema.get("exclusiveMaximum") is True
    if "minimum" in schema:
        lower = Bound(_decimal(schema["minimum"], "minimum"), not draft4_exclusive_min)
    if "maximum" in schema:
        upper = Bound(_decimal(schema["maximum"], "maximum"), not draft4_exclusive_max)
    value = schema.get("exclusiveMinimum")
    if value is not None and not isinstance(value, bool):
        candidate = Bound(_decimal(value, "exclusiveMinimum"), False)
        if lower is None or candidate.value >= lower.value:
            lower = candidate
    value = schema.get("exclusiveMaximum")
    if value is not None and not isinstance(value, bool):
        candidate = Bound(_decimal(value, "exclusiveMaximum"), False)
        if upper is None or candidate.value <= upper.value:
            upper = candidate
    return lower, upper


# ---------------------------------------------------------------------------
# Non-negative integers (canonical: no leading zeros) in a range


def _fixed_range(lo: str, hi: str) -> Node:
    """Digit strings of equal length with lo <= s <= hi (as strings of digits)."""
    if not lo:
        return EMPTY
    if lo[0] == hi[0]:
        return seq(Digits(int(lo[0]), int(lo[0])), _fixed_range(lo[1:], hi[1:]))
    rest = len(lo) - 1
    items: list[Node] = []
    low_tail_full = set(lo[1:]) <= {"0"}
    high_tail_full = set(hi[1:]) <= {"9"}
    first = int(lo[0]) if low_tail_full else int(lo[0]) + 1
    last = int(hi[0]) if high_tail_full else int(hi[0]) - 1
    if not low_tail_full:
        items.append(seq(Digits(int(lo[0]), int(lo[0])), _fixed_range(lo[1:], "9" * rest)))
    if first <= last:
        items.append(seq(Digits(first, last), Rep(ANY_DIGIT, rest, rest)) if rest else Digits(first, last))
    if not high_tail_full:
        items.append(seq(Digits(int(hi[0]), int(hi[0])), _fixed_range("0" * rest, hi[1:])))
    node = alt(items)
    assert node is not None
    return node


def int_range(lo: int, hi: int) -> list[tuple[int, Node]]:
    """Canonical decimal integers in ``lo..hi`` (0 <= lo <= hi), by digit count: [(digits, node)]."""
    out: list[tuple[int, Node]] = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        start = max(lo, 0 if length == 1 else 10 ** (length - 1))
        stop = min(hi, 10**length - 1)
        if start <= stop:
            out.append((length, _fixed_range(str(start).zfill(length), str(stop).zfill(length))))
    return out


# ---------------------------------------------------------------------------
# Fractions: digit strings d1..dm (1 <= m <= cap) with 0.d1..dm within bounds


def _frac_digits(value: Decimal) -> str:
    """The digits after the point of 0 <= value < 1, without trailing zeros."""
    text = format(value, "f")
    return text.split(".")[1].rstrip("0") if "." in text else ""


def fraction(low: Bound | None, high: Bound | None, cap: int) -> Node | None:
    """Digit strings f (1..cap digits) with low < 0.f < high (each bound: inclusive or not, or None).

    ``low.value`` and ``high.value`` are in [0, 1]; a high bound of 1 (exclusive) is no bound.
    Returns None when there is no such string.
    """
    if cap < 1:
        return None
    lo_digits = _frac_digits(low.value) if low is not None else ""
    hi_digits = _frac_digits(high.value) if high is not None else ""
    hi_is_one = high is not None and high.value >= 1
    memo: dict[tuple[int, bool, bool], Node | None] = {}

    def ends_ok(i: int, tight_lo: bool, tight_hi: bool) -> bool:
        """Whether stopping after i digits satisfies both bounds."""
        if tight_lo and low is not None:
            rest_lo = lo_digits[i:]
            if rest_lo:  # the bound has more (nonzero) digits: below it
                return False
            if not low.inclusive:  # equal
                return False
        if tight_hi and high is not None and not hi_is_one:
            rest_hi = hi_digits[i:]
            if not rest_hi and not high.inclusive:  # equal to an exclusive bound
                return False
        return True

    def state(i: int, tight_lo: bool, tight_hi: bool) -> Node | None:
        """Continuations after i digits (the empty one included where valid)."""
        key = (i, tight_lo, tight_hi)
        if key in memo:
            return memo[key]
        items: list[Node] = []
        if i >= 1 and ends_ok(i, tight_lo, tight_hi):
            items.append(EMPTY)
        if i < cap:
            lo_d = int(lo_digits[i]) if tight_lo and i < len(lo_digits) else 0
            hi_d = (int(hi_digits[i]) if i < len(hi_digits) else 0) if tight_hi and not hi_is_one else 9
            free_lo = lo_d + (1 if tight_lo else 0)
            free_hi = hi_d - (1 if tight_hi and not hi_is_one else 0)
            if free_lo <= free_hi:
                remaining = cap - i - 1
                items.append(seq(Digits(free_lo, free_hi), Rep(ANY_DIGIT, 0, remaining)))
            if tight_lo and lo_d <= hi_d:
                both = tight_hi and not hi_is_one and lo_d == hi_d
                rest = state(i + 1, True, both)
                if rest is not None:
                    items.append(seq(Digits(lo_d, lo_d), rest))
            if tight_hi and not hi_is_one and hi_d >= lo_d and not (tight_lo and lo_d == hi_d):
                rest = state(i + 1, False, True)
                if rest is not None:
                    items.append(seq(Digits(hi_d, hi_d), rest))
        node = alt(items)
        memo[key] = node
        return node

    return state(0, low is not None, high is not None and not hi_is_one)


# ---------------------------------------------------------------------------
# Non-negative magnitudes in [low, high]


def _int_digits_cap() -> int:
    return SIG_DIGITS


def magnitude(low: Bound, high: Bound | None) -> Node | None:
    """Non-negative decimals x with low <= x <= high (bounds inclusive or not; high None: unbounded)."""
    a, b = low.value, (high.value if high is not None else None)
    top = Decimal(10) ** _int_digits_cap() - 1  # the largest integer part generated
    int_a = int(a.to_integral_value(rounding=ROUND_FLOOR))
    int_b = int(b.to_integral_value(rounding=ROUND_FLOOR)) if b is not None else int(top)
    int_b = min(int_b, int(top))
    if b is not None and b > top:
        high = None
    items: list[Node] = []

    def frac_cap(int_part: int) -> int:
        return SIG_DIGITS - (len(str(int_part)) if int_part > 0 else 0)

    def with_fraction(int_node: Node, int_part_digits: int, frac: Node | None, whole_ok: bool) -> None:
        parts: list[Node] = []
        if whole_ok:
            parts.append(EMPTY)
        if frac is not None:
            parts.append(seq(Lit("."), frac))
        tail = alt(parts)
        if tail is not None:
            items.append(seq(int_node, tail))

    def bound_at(value: Decimal, integer: int, inclusive: bool) -> Bound:
        return Bound(value - integer, inclusive)

    if int_a > int_b:
        return None
    low_frac = bound_at(a, int_a, low.inclusive)
    for n in sorted({int_a, int_b}):
        lo_f = low_frac if n == int_a else None
        hi_f = bound_at(b, n, high.inclusive) if (high is not None and n == int_b and b is not None) else None
        whole_ok = (lo_f is None or (lo_f.value == 0 and lo_f.inclusive)) and (
            hi_f is None or hi_f.value > 0 or hi_f.inclusive
        )
        frac = fraction(lo_f, hi_f, frac_cap(n))
        with_fraction(Lit(str(n)), len(str(n)), frac, whole_ok)
    if int_a + 1 <= int_b - 1:
        for length, node in int_range(int_a + 1, int_b - 1):
            cap = SIG_DIGITS - length
            frac = Rep(ANY_DIGIT, 1, cap) if cap >= 1 else None
            with_fraction(node, length, frac, True)
    return alt(items)


def number_node(lower: Bound | None, upper: Bound | None) -> Node:
    """JSON numbers between ``lower`` and ``upper``; ValueError when there are none."""
    if lower is not None:
        lower = _tighten(lower, True)
    if upper is not None:
        upper = _tighten(upper, False)
    if (
        lower is not None
        and upper is not None
        and (
            lower.value > upper.value
            or (lower.value == upper.value and not (lower.inclusive and upper.inclusive))
        )
    ):
        raise ValueError(f"no number is >= {lower.value} and <= {upper.value} with these bounds")
    items: list[Node] = []
    zero = Decimal(0)
    # non-negative part: [max(lower, 0), upper]
    if upper is None or upper.value > zero or (upper.value == zero and upper.inclusive):
        low = Bound(zero, True) if lower is None or lower.value < zero else lower
        node = magnitude(low, upper)
        if node is not None:
            items.append(node)
    # negative part: -m with m in (0, |lower|] and -m <= upper, i.e. m >= -upper
    if lower is None or lower.value < zero:
        if upper is not None and upper.value < zero:
            m_low = Bound(-upper.value, upper.inclusive)
        else:
            m_low = Bound(zero, False)
        m_high = Bound(-lower.value, lower.inclusive) if lower is not None else None
        node = magnitude(m_low, m_high)
        if node is not None:
            items.append(seq(Lit("-"), node))
    result = alt(items)
    if result is None:
        raise ValueError("no number with at most 15 significant digits satisfies these bounds")
    return result
