"""convnet: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) with hand-written CPU and CUDA kernels.

Tensors live on a device named "cpu" or "cuda:N"; `convnet.ops` holds the kernels.
"""
import numpy as np

def _load_compiled():
    """The compiled module: next to this file (an installed package, or an in-place build), or
    else, when these are a checkout's sources run with `python -m` after `pip install .`, the
    installed package's build of the same sources, found further along sys.path."""
    import glob
    import importlib
    import os
    import sys

    try:
        return importlib.import_module("._C", __name__)
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.join(os.path.abspath(entry or os.getcwd()), "convnet")
        if folder != here and glob.glob(os.path.join(folder, "_C*.so")):
            __path__.append(folder)
            return importlib.import_module("._C", __name__)
    raise ImportError(
        f"convnet's compiled module is missing next to {__file__} and no installed build was found: "
        "run `pip install .`, or build in place with tools/dev_build.sh")


_C = _load_compiled()
from ._C import Tensor
from ._checks import cast, flag, integer

__all__ = ["Tensor", "tensor", "from_dlpack", "empty", "zeros", "cuda_available", "device_count",
           "synchronize", "ops"]

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


def tensor(data, device="cpu", dtype=None):
    """A new tensor holding a copy of `data` (an ndarray, list, or Tensor) on `device`.

    Without `dtype`, float32/int32/uint8 arrays keep their dtype, other floating arrays
    become float32, other integer arrays int32 and booleans uint8. Integers that do not fit
    the integer dtype they go to raise ValueError.
    """
    if isinstance(data, Tensor):
        if dtype is not None and dtype != data.dtype:
            raise TypeError(f"tensor: cannot change dtype {data.dtype} -> {dtype} of a Tensor")
        return data.to(device).clone() if data.device == _C.parse_device(device) else data.to(device)
    if not isinstance(device, str):
        raise TypeError(f"tensor: device must be a string ('cpu', 'cuda:0', ...), got {device!r}")
    a = np.asarray(data)
    if dtype is not None:
        if dtype not in _DTYPES:
            raise TypeError(f"tensor: unsupported dtype {dtype!r} (use float32, int32 or uint8)")
        a = cast(a, _DTYPES[dtype])
    elif a.dtype not in (np.float32, np.int32, np.uint8):
        kind = {"f": np.float32, "i": np.int32, "u": np.int32, "b": np.uint8}.get(a.dtype.kind)
        if kind is None:
            raise TypeError(f"tensor: unsupported dtype {a.dtype} (use float32, int32 or uint8)")
        a = cast(a, kind)
    # order="C", not ascontiguousarray: that one turns a 0-d array into shape (1,)
    return _C.from_numpy(np.asarray(a, order="C"), device)


def from_dlpack(obj):
    """A tensor sharing memory with `obj` (anything with __dlpack__: NumPy, PyTorch, CuPy arrays).
    Asks for a DLPack 1.0 capsule (one that says whether the array is read-only: a read-only array
    is refused, as tensors are writable), and falls back to the unversioned one for producers older
    than DLPack 1.0."""
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TypeError(f"from_dlpack: {type(obj).__name__} does not support the DLPack protocol "
                        "(__dlpack__ and __dlpack_device__)")
    dev_type, _ = obj.__dlpack_device__()
    # CUDA: the producer orders its pending work before the legacy default stream (1); our
    # per-thread streams are blocking streams, so they wait for that stream too.
    stream = {"stream": 1} if dev_type == 2 else {}
    try:
        capsule = obj.__dlpack__(max_version=(1, 0), **stream)
    except TypeError:  # a producer from before DLPack 1.0: no max_version argument
        capsule = obj.__dlpack__(**stream)
    return _C.from_dlpack_capsule(capsule)


def empty(shape, dtype="float32", device="cpu", pinned=False):
    """An uninitialised tensor. pinned=True (device "cpu", needs a GPU): page-locked host memory,
    whose .to("cuda:N", non_blocking=True) only queues the copy on this thread's stream; kernels
    queued after it see the data, and the host side must not be written again before
    convnet.synchronize(device)."""
    return _C.empty(_shape(shape, "empty"), dtype, device, flag(pinned, "empty: pinned"))


def zeros(shape, dtype="float32", device="cpu"):
    return _C.zeros(_shape(shape, "zeros"), dtype, device)


def _shape(shape, what):
    """A shape as a list of ints: one int or a sequence of them (True is not 1)."""
    if not isinstance(shape, (list, tuple)):
        shape = [shape]
    return [integer(n, f"{what}: shape {tuple(shape)}") for n in shape]


def cuda_available():
    """True when the CUDA backend is built and at least one GPU is visible."""
    return _C.cuda_built() and _C.cuda_device_count() > 0


def device_count():
    return _C.cuda_device_count()


def synchronize(device="cuda:0"):
    """Wait for this thread's queued work on `device` (a no-op for the CPU)."""
    _C.synchronize(device)


from . import ops  # noqa: E402
