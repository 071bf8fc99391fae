r"""Parsing the missing-modality protocol strings (``--missing``).

Kept apart from :mod:`pyg_mmrec.data.missing` (which builds the masks) so that
the command line can validate ``--missing`` without importing PyTorch;
:mod:`pyg_mmrec.data.missing` re-exports everything here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PROTOCOLS = ("natural", "i3mrec", "dgmrec", "entry")
I3MREC_MODES = ("ff", "fm", "mm")
EVAL_ITEMS = ("valid+test", "test", "all")


@dataclass(frozen=True)
class MissingSpec:
    r"""A parsed missing-modality protocol (see :func:`parse_missing_spec`)."""

    protocol: str
    mode: Optional[str] = None  # i3mrec only
    rate: float = 0.0
    test_share: float = 0.5
    drop: int = 1
    eval_items: str = "valid+test"
    fixed: bool = False  # i3mrec only: seed-independent masks, one lost set per item

    def __str__(self) -> str:
        if self.protocol == "natural":
            return "natural"
        if self.protocol == "i3mrec":
            s = f"i3mrec:{self.mode}:{self.rate:.10g}"
            if self.test_share != 0.5:
                s += f":test_share={self.test_share:.10g}"
            if self.drop != 1:
                s += f":drop={self.drop}"
            if self.eval_items != "valid+test":
                s += f":eval_items={self.eval_items}"
            if self.fixed:
                s += ":fixed"
            return s
        return f"{self.protocol}:{self.rate:.10g}"


def _rate(spec: str, what: str, text: str, hi: float = 1.0) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"missing spec {spec!r}: {what} must be a number, got {text!r}") from None
    if not 0.0 <= v <= hi:
        raise ValueError(f"missing spec {spec!r}: {what} must be in [0, {hi:g}], got {v:g}")
    return v


def parse_missing_spec(spec: "str | MissingSpec") -> MissingSpec:
    r"""Parses ``"natural"``, ``"i3mrec:fm:0.3"``, ``"dgmrec:0.667"``,
    ``"entry:0.3"`` (plus optional ``:key=value`` fields).

    Raises:
        ValueError: unknown protocol, mode, parameter, or out-of-range rate.
    """
    if isinstance(spec, MissingSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"missing spec: expected a string such as 'natural', 'i3mrec:fm:0.3', "
                         f"'dgmrec:0.667' or 'entry:0.3', got {spec!r}")
    parts = [p.strip() for p in spec.strip().split(":")]
    proto, args = parts[0].lower(), parts[1:]
    pos = [a for a in args if "=" not in a]
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    if proto not in PROTOCOLS:
        raise ValueError(f"missing spec {spec!r}: unknown protocol {proto!r}; expected one of "
                         f"{list(PROTOCOLS)}")
    allowed = {"i3mrec": {"test_share", "drop", "eval_items"}}.get(proto, set())
    unknown = set(kv) - allowed
    if unknown:
        raise ValueError(f"missing spec {spec!r}: unknown parameter(s) {sorted(unknown)} for "
                         f"'{proto}' (allowed: {sorted(allowed) or 'none'})")
    if proto == "natural":
        if pos:
            raise ValueError(f"missing spec {spec!r}: 'natural' takes no arguments")
        return MissingSpec("natural")
    if proto == "i3mrec":
        fixed = len(pos) == 3 and pos[2].lower() == "fixed"
        if len(pos) != 2 + fixed:
            raise ValueError(f"missing spec {spec!r}: expected 'i3mrec:<ff|fm|mm>:<rate>' "
                             "optionally followed by ':fixed'")
        mode = pos[0].lower()
        if mode not in I3MREC_MODES:
            raise ValueError(f"missing spec {spec!r}: unknown i3mrec mode {mode!r}; expected "
                             f"one of {list(I3MREC_MODES)}")
        rate = _rate(spec, "rate", pos[1])
        test_share = _rate(spec, "test_share", kv.get("test_share", "0.5"))
        try:
            drop = int(kv.get("drop", "1"))
        except ValueError:
            raise ValueError(f"missing spec {spec!r}: drop must be an integer") from None
        if drop < 1:
            raise ValueError(f"missing spec {spec!r}: drop must be >= 1, got {drop}")
        eval_items = kv.get("eval_items", "valid+test")
        if eval_items not in EVAL_ITEMS:
            raise ValueError(f"missing spec {spec!r}: eval_items must be one of "
                             f"{list(EVAL_ITEMS)}, got {eval_items!r}")
        return MissingSpec("i3mrec", mode, rate, test_share, drop, eval_items, fixed)
    if len(pos) > 1:
        raise ValueError(f"missing spec {spec!r}: expected '{proto}:<rate>'")
    if proto == "dgmrec":
        share = _rate(spec, "share", pos[0]) if pos else 2.0 / 3.0
        return MissingSpec("dgmrec", rate=share)
    if not pos:
        raise ValueError(f"missing spec {spec!r}: expected 'entry:<rate>'")
    return MissingSpec("entry", rate=_rate(spec, "rate", pos[0]))


__all__ = ["PROTOCOLS", "I3MREC_MODES", "EVAL_ITEMS", "MissingSpec", "parse_missing_spec"]
