"""Markdown rendering of report tables: counts as plain integers (no thousands separators: they are read back
as numbers too), measurements with fixed decimals, blanks for missing."""

from __future__ import annotations

import math
from numbers import Number

import pandas as pd


def _cell(value, decimals: int, integer: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, Number) and not isinstance(value, bool):
        return f"{int(value)}" if integer else f"{value:.{decimals}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, decimals: int = 2, integer_columns: tuple[str, ...] = ()) -> str:
    cells = pd.DataFrame({col: [_cell(v, decimals, col in integer_columns) for v in table[col]] for col in table})
    return cells.to_markdown(index=False, disable_numparse=True)
