"""cvfp/runtime/csv_table.py writes the bytes pandas' to_csv(index=False) writes, for every
kind of column the stages' CSV files hold (tasks/phase1.py, tasks/phase2.py), so dropping
pandas from those processes changes no output byte."""

import io
import math

import numpy as np
import pandas as pd
import pytest

from cvfp.runtime.csv_table import csv_text, rows_to_columns, write_csv


def pandas_text(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def test_columns_are_written_as_pandas_writes_them(tmp_path):
    rng = np.random.default_rng(0)
    columns = {
        "epoch": range(3),  # ints stay ints
        "loss": [2.5, 1e-05, 1.2345678901234568e17],  # shortest round-trip floats
        "mixed": [0, 1.5, 2],  # ints among floats: float64, 0 -> 0.0
        "missing": [None, 2, float("nan")],  # a missing value: float64, empty
        "empty": [None, None, None],
        "flag": [True, False, True],
        "text": ["a,b", 'say "hi"', None],  # quoted as the csv module quotes
        "numpy": [np.float64(0.3), np.int64(4), float(np.float32(0.1))],
        "extremes": [math.inf, -0.0, 5e-324],
        "random": list(rng.standard_normal(3) * 10.0 ** rng.integers(-30, 30, 3)),
    }
    assert csv_text(columns) == pandas_text(pd.DataFrame(columns))
    write_csv(tmp_path / "t.csv", columns)
    assert (tmp_path / "t.csv").read_text() == pandas_text(pd.DataFrame(columns))
    many = {"x": [float(v) for v in rng.standard_normal(20_000) * 10.0 ** rng.integers(-40, 40)]}
    assert csv_text(many) == pandas_text(pd.DataFrame(many))


def test_rows_become_columns_as_a_dataframe_of_dicts():
    rows = [{"iteration": 0, "diff": 0.5}, {"iteration": 1, "diff": 0.25, "extra": 3}]
    assert csv_text(rows_to_columns(rows)) == pandas_text(pd.DataFrame(rows))
    chosen = ["diff", "iteration", "absent"]
    assert csv_text(rows_to_columns(rows, chosen)) == pandas_text(
        pd.DataFrame(rows, columns=chosen)
    )
    assert csv_text({"a": []}) == pandas_text(pd.DataFrame({"a": []}))
    with pytest.raises(ValueError, match="unequal length"):
        csv_text({"a": [1], "b": [1, 2]})
    with pytest.raises(TypeError, match="float32"):  # pandas writes those shorter
        csv_text({"a": [np.float32(0.1)]})
