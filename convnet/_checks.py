"""Argument checks shared by the Python layer (ops, layers, graph, data): the one place that
says what counts as an integer and when an array converts to an integer dtype."""
import math
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


def json_int(v, minimum=None):
    """Whether v, a value read from a JSON file (a checkpoint's metadata, a dataset's index), is an
    integer (a bool is not), at least `minimum` if given."""
    return isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)


def json_number(v, finite=False):
    """Whether v, a value read from a JSON file, is a real number (a bool is not), finite if asked
    (JSON's NaN and Infinity read as floats)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (not finite or math.isfinite(v))


def number(v, what, error=TypeError):
    """v as a Python float: a real number (Python or NumPy, a 0-d integer or float array, anything
    else with __float__), not a bool, a string or bytes, or a complex number (float() takes True
    and "0.5" without a word, and NumPy's complex with a warning; `error` is raised for those)."""
    refused = (str, bytes, bytearray, memoryview, bool, np.bool_, complex, np.complexfloating)
    if not isinstance(v, refused) and not (isinstance(v, np.ndarray) and (v.ndim or v.dtype.kind not in "iuf")):
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
    raise error(f"{what} must be a number, got {v!r}")


def float32_number(v, what, minimum=None):
    """number(v), finite as a float32 (the kernels' type: 1e39 becomes inf there), and at least
    `minimum` if given (ValueError for both)."""
    v = number(v, what)
    if not abs(v) <= 3.4028234663852886e38 or (minimum is not None and v < minimum):  # NaN fails too
        bound = "" if minimum is None else f" and >= {minimum}"
        raise ValueError(f"{what} must be finite as a float32{bound}, got {v}")
    return v


def flag(v, what):
    """v as a bool: True or False (Python or NumPy), not a string or a number ("False" is true)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {v!r}")
    return bool(v)


def output_file_problem(path, flag="--json"):
    """Why a command's output file (flag FILE) cannot be written there, or None (path None: no
    file asked for). Checked before the command's work, which otherwise ended in a traceback (or,
    for an empty name, in no file and no word of it)."""
    from pathlib import Path

    if path is None:
        return None
    if path == "":
        return f"{flag}: the file name is empty"
    if Path(path).is_dir():
        return f"{flag} {path}: is a folder"
    if not Path(path).parent.is_dir():
        return f"{flag} {path}: its folder does not exist"
    return None


def cast(a, dtype, what="tensor"):
    """NumPy array `a` of real numbers (or bools) as `dtype`, every value kept (fractions into an
    integer dtype are truncated, as by astype). astype alone takes complex, strings, objects and
    dates, wraps integers (int64 2**32 + 3 -> int32 3, -1 -> uint8 255), turns NaN into -2**31
    and 1e39 into a float32 inf, all silently."""
    dtype = np.dtype(dtype)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: unsupported dtype {a.dtype} (real numbers: float32, int32 or uint8)")
    if a.dtype == dtype or not a.size:
        return a.astype(dtype, copy=False)
    if dtype.kind in "iu" and a.dtype.kind in "iuf":
        lo, hi = a.min(), a.max()
        lo, hi = (int(lo), int(hi)) if a.dtype.kind in "iu" else (float(lo), float(hi))
        info = np.iinfo(dtype)
        if not info.min <= lo <= hi <= info.max:  # False for NaN too
            raise ValueError(f"{what}: values from {lo} to {hi} do not fit in {dtype.name} "
                             f"({info.min} to {info.max})")
    if dtype.kind == "f" and a.dtype.kind == "f" and a.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):
            out = a.astype(dtype)
        overflowed = np.isinf(out) & np.isfinite(a)
        if overflowed.any():
            raise ValueError(f"{what}: {a[overflowed].flat[0]} is past {dtype.name}'s range "
                             f"(it would become inf)")
        return out
    return a.astype(dtype)
