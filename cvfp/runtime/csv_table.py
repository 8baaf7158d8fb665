"""CSV files written as pandas' `DataFrame(columns).to_csv(path, index=False)` writes them,
byte for byte, without importing pandas (~0.35 s CPU in every phase1 and phase2 process,
which write their tables and read nothing else with it). tests/test_csv_table.py holds the
bytes equal to pandas' for every kind of column the stages write.

A column is formatted as pandas formats its inferred dtype: integers alone stay integers;
numbers with any float or a missing value (None, NaN) become float64 (3 -> "3.0"); floats are
written in their shortest round-trip form (Python's repr, which numpy's str of a float64
equals); a missing value is empty; booleans alone are True/False; anything else (text, or
mixed kinds) is str(value). Quoting is the csv module's minimal quoting, as pandas uses it."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from cvfp.runtime.utils import BeforeReplace, atomic_path


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"  # numpy.bool_ too


def _column_text(values: Sequence[Any]) -> list[str]:
    present = [v for v in values if not _missing(v)]
    narrow = [v for v in present if isinstance(v, Real) and not isinstance(v, (float, Integral))]
    if narrow:  # pandas would keep e.g. float32 and write its shorter form: not done here
        raise TypeError(f"csv_table writes Python/float64 numbers; got {type(narrow[0]).__name__}")
    if present and all(_is_bool(v) for v in present) and len(present) == len(values):
        return [str(bool(v)) for v in values]
    numbers = all(isinstance(v, Real) and not _is_bool(v) for v in present)
    if numbers and present and len(present) == len(values):
        if all(isinstance(v, Integral) for v in present):
            return [str(int(v)) for v in values]
    if numbers and present:  # float64: ints as floats, missing values empty
        return ["" if _missing(v) else repr(float(v)) for v in values]
    return ["" if _missing(v) else str(v) for v in values]


def csv_text(columns: Mapping[str, Sequence[Any]]) -> str:
    """The CSV text of equal-length `columns` (name -> values), a header line first."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of unequal length: { {k: len(v) for k, v in columns.items()} }")
    texts = [_column_text(list(v)) for v in columns.values()]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(zip(*texts, strict=True))
    return out.getvalue()


def rows_to_columns(rows: Sequence[dict], columns: Sequence[str] | None = None) -> dict:
    """DataFrame(rows, columns=columns)'s columns: the given ones, or every key in order of
    first appearance; a key missing from a row is a missing value."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return {c: [r.get(c) for r in rows] for c in columns}


def write_csv(
    path: str | Path,
    columns: Mapping[str, Sequence[Any]],
    before_replace: BeforeReplace | None = None,
) -> None:
    """`csv_text(columns)` to `path`, atomically (a temporary path, renamed), as write_json."""
    with atomic_path(path, before_replace) as tmp:
        tmp.write_text(csv_text(columns))
