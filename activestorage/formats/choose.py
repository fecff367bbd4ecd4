"""Which variable ``Active(path)`` reduces when no variable is named.

A Zarr store that is itself one array is that array. Otherwise the dataset must hold exactly one
*data variable*: a numeric variable that is not a coordinate variable (named like its first
dimension, as ``lat(lat)``) and that no other variable names in a CF ``bounds``, ``climatology``,
``coordinates``, ``cell_measures`` or ``grid_mapping`` attribute. Anything else is ambiguous, and
the error lists the candidates so the caller can name one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import VariableNotFoundError

#: CF attributes whose values name auxiliary variables (not the data a user means to reduce)
CF_REFERENCE_ATTRS = ("bounds", "climatology", "coordinates", "cell_measures", "grid_mapping")


@dataclass(frozen=True)
class Candidate:
    """One variable as a format reader lists it: its path, dimension names and attributes (what
    the choice needs), its dtype name (``"char"`` for text, which is never reduced) and, for a
    Zarr store that is itself one array, ``array_store``."""

    name: str
    dimensions: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = ""
    array_store: bool = False


def _referenced(attrs: Mapping[str, Any]) -> set[str]:
    """Variable names that ``attrs`` point at (``cell_measures: "area: areacello"`` -> areacello)."""
    out: set[str] = set()
    for key in CF_REFERENCE_ATTRS:
        value = attrs.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            out.update(w for w in value.split() if not w.endswith(":"))
    return out


def data_variables(candidates: Iterable[Candidate]) -> list[str]:
    """Names of the data variables among ``candidates`` (see the module docstring), in order."""
    cands = list(candidates)
    referenced: set[str] = set()
    for c in cands:
        group = c.name.rpartition("/")[0]
        for ref in _referenced(c.attrs):  # relative to the referring variable's group, or absolute
            referenced.add(ref.lstrip("/") if ref.startswith("/") or not group else f"{group}/{ref}")
    out = []
    for c in cands:
        base = c.name.rsplit("/", 1)[-1]
        if c.dimensions and c.dimensions[0] == base:
            continue  # a coordinate variable
        if c.name in referenced:
            continue
        out.append(c.name)
    return out


def choose_variable(candidates: Iterable[Candidate], where: str) -> str:
    """The one data variable of ``where``, or a :class:`VariableNotFoundError` listing candidates."""
    cands = list(candidates)
    data = data_variables(cands)
    if len(data) == 1:
        return data[0]
    if data:
        raise VariableNotFoundError(
            f"{where} has {len(data)} data variables; name the one to reduce, e.g. "
            f"Active(..., {data[0]!r}); data variables: {', '.join(data)}")
    listed = ", ".join(c.name for c in cands) or "none"
    raise VariableNotFoundError(
        f"{where} has no data variable to reduce by default (only coordinates, bounds and the "
        f"like); name one of its variables: {listed}")
