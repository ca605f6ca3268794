"""Argument checks shared by the Python layer (ops, layers, graph, data): the one place that
says what counts as an integer and when an array converts to an integer dtype."""
import operator

import numpy as np


def integer(v, what, minimum=None, error=TypeError):
    """v as a Python int: a Python or NumPy integer, not a bool, float or string (int() takes 1.5,
    True and "3" without a word; `error` is raised for those), and at least `minimum` if given
    (ValueError)."""
    if not isinstance(v, (bool, np.bool_)):
        try:
            v = operator.index(v)
        except TypeError:
            pass
        else:
            if minimum is not None and v < minimum:
                raise ValueError(f"{what} must be >= {minimum}, got {v}")
            return v
    raise error(f"{what} must be an integer, got {v!r}")


def cast(a, dtype, what="tensor"):
    """NumPy array `a` as `dtype`. Into an integer dtype every value must fit: astype alone wraps
    (int64 2**32 + 3 -> int32 3, -1 -> uint8 255) and turns NaN into -2**31, silently."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if dtype.kind in "iu" and a.dtype.kind in "iuf" and a.size:
        lo, hi = a.min(), a.max()
        lo, hi = (int(lo), int(hi)) if a.dtype.kind in "iu" else (float(lo), float(hi))
        info = np.iinfo(dtype)
        if not info.min <= lo <= hi <= info.max:  # False for NaN too
            raise ValueError(f"{what}: values from {lo} to {hi} do not fit in {dtype.name} "
                             f"({info.min} to {info.max})")
    return a.astype(dtype)
