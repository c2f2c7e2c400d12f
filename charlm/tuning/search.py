"""The search grammar of jobs.tune: `--search FLAG=KIND:VALUES` over any
training flag, parsed into Ray Tune search spaces.

    choice:a,b,c      one of the values, drawn at random for each trial
    grid:a,b,c        every value, each in its own trials
    uniform:lo:hi     a float drawn uniformly from [lo, hi)
    loguniform:lo:hi  a float drawn uniformly in log space from [lo, hi), lo > 0
    randint:lo:hi     a whole number from lo to hi, both included

FLAG is a jobs.train flag without its dashes (`learning-rate`, or the field's
own name, `learning_rate`). Values are read as the flag's type: `none` clears
a flag that may be unset (`clipnorm=choice:none,1`), true/false set a switch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass

from charlm.config import TrainConfig
from charlm.errors import CharlmError

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# Settings of the sweep itself, never a trial's value.
SWEEP_OWN = {"name": "--name", "storage_path": "--storage-path", "verbose": "--verbose"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Search:
    """One searched training flag: `values` are the choices (choice, grid) or
    the range's ends (uniform, loguniform, randint), in the flag's type."""

    field: str  # TrainConfig's name: learning_rate
    kind: str
    values: tuple

    @property
    def flag(self) -> str:
        return flag(self.field)

    def space(self):
        """The Ray Tune search space: a domain, or a grid."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "randint":
            return tune.randint(low, high + 1)  # Tune's upper end is excluded
        return (tune.loguniform if self.kind == "loguniform" else tune.uniform)(low, high)

    def text(self) -> str:
        """The spec as given, in canonical form."""
        sep = "," if self.kind in ("choice", "grid") else ":"
        return f"{self.flag[2:]}={self.kind}:{sep.join(_shown(v) for v in self.values)}"


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def field_type(field: str) -> tuple[type, bool]:
    """(the field's type, whether it may be None)."""
    hint = typing.get_type_hints(TrainConfig)[field]
    args = typing.get_args(hint)
    if args:
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def convert(field: str, value):
    """A value of the field's type: what Tune samples (numpy numbers) or a
    grid value, made fit for TrainConfig and JSON."""
    kind, _ = field_type(field)
    return value if value is None else kind(value)


def parse(spec: str) -> Search:
    """One `--search` value; every mistake is one CharlmError line."""
    def fail(problem: str, fix: str) -> CharlmError:
        return CharlmError(f"--search {spec!r}: {problem}; {fix}")

    name, eq, rest = spec.partition("=")
    kind, colon, values = rest.partition(":")
    if not eq or not colon or not name.strip():
        raise fail("it is not FLAG=KIND:VALUES",
                   "write e.g. learning-rate=loguniform:0.003:0.03 or layers=choice:1,2")
    field = name.strip().lstrip("-").replace("-", "_")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    if field in SWEEP_OWN:
        raise fail(f"{SWEEP_OWN[field]} is the sweep's own setting, not a trial's",
                   f"pass {SWEEP_OWN[field]} once for the whole sweep")
    if field not in fields:
        near = difflib.get_close_matches(field, [f for f in fields if f not in SWEEP_OWN], n=1)
        hint = (f"did you mean {flag(near[0])[2:]}?" if near
                else "use a flag that `python -m jobs.train --help` lists, e.g. learning-rate")
        raise fail(f"{name.strip()} is not a flag of jobs.train", hint)
    kind = kind.strip()
    if kind not in KINDS:
        raise fail(f"{kind!r} is not a search kind", f"use one of {', '.join(KINDS)}")
    base, optional = field_type(field)
    if kind in ("choice", "grid"):
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise fail("it lists no value", f"write {kind}:a,b with values of {flag(field)}")
        return Search(field, kind, tuple(_value(fail, field, base, optional, v) for v in items))
    ends = values.split(":")
    if len(ends) != 2:
        raise fail(f"{kind} takes two ends", f"write {kind}:LOW:HIGH")
    if base is int and kind != "randint":
        raise fail(f"{flag(field)} takes whole numbers", "use randint:LOW:HIGH, choice or grid")
    if base is float and kind == "randint":
        raise fail(f"{flag(field)} takes fractions", "use uniform or loguniform")
    if base not in (int, float):
        raise fail(f"{flag(field)} is not a number", "use choice or grid")
    low, high = (_value(fail, field, base, False, v.strip()) for v in ends)
    if kind == "randint" and low > high or kind != "randint" and not low < high:
        raise fail(f"the range from {low} to {high} is empty",
                   "give a LOW below HIGH" if kind != "randint" else "give LOW <= HIGH")
    if kind == "loguniform" and low <= 0:
        raise fail("loguniform needs a LOW above 0", "give positive ends, e.g. 0.001:0.1")
    return Search(field, kind, (low, high))


def parse_all(specs: list[str]) -> list[Search]:
    searches = [parse(s) for s in specs]
    seen: set[str] = set()
    for s in searches:
        if s.field in seen:
            raise CharlmError(f"--search gives {s.flag} twice; search each flag once")
        seen.add(s.field)
    return searches


def _value(fail, field: str, base: type, optional: bool, text: str):
    if optional and text.lower() == "none":
        return None
    try:
        if base is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(text)
            return text.lower() in _TRUE
        value = base(text)
    except ValueError:
        kind = {int: "whole number", float: "number", bool: "true or false"}.get(base, "value")
        raise fail(f"{text!r} is not a {kind}",
                   f"give values of {flag(field)}" + (" or none" if optional else "")) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(f"{text!r} is not a finite number", f"give values of {flag(field)}")
    return value


def _shown(value) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return str(value)
