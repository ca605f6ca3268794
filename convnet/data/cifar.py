"""Read a CIFAR-10 `cifar-10-batches-py` folder (the Python pickle release) directly: the five
data_batch_* files are the training split, test_batch the validation split. Images are held
in memory (150 MB); the mean image and the RGB PCA are computed on opening."""
import pickle
from pathlib import Path

import numpy as np

from .._checks import cast

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"


def is_cifar_folder(path):
    path = Path(path)
    return (path / META_FILE).is_file() and ((path / TEST_FILE).is_file() or (path / TRAIN_FILES[0]).is_file())


# What a CIFAR-10 pickle may name: numpy arrays, dtypes and scalars (as numpy 1 and 2 write them)
# and the bytes of Python 3's protocol 2. pickle.load would call whatever a file names, so a
# folder from anywhere could run code on opening.
_CIFAR_GLOBALS = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR-10 file holds")
        return super().find_class(module, name)


def _unpickle(path, keys):
    """The dict of a CIFAR-10 pickle file, holding `keys`. A truncated or foreign file fails inside
    pickle in many ways (UnpicklingError, EOFError, TypeError...) that did not name the file."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever pickle raised, the file is not a CIFAR-10 batch
        raise ValueError(f"cifar: {path} is not a CIFAR-10 pickle (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from None
    missing = [k.decode() for k in keys if not isinstance(d, dict) or k not in d]
    if missing:
        raise ValueError(f"cifar: {path} is not a CIFAR-10 pickle: it holds no {' and '.join(missing)}")
    return d


def _integers(a, dtype, what):
    """a as the integer `dtype`, every value kept (astype wrapped 300 to 44 and -1 to 255)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got {a.dtype}")
    return cast(a, dtype, what)


def _load(path):
    d = _unpickle(path, (b"data", b"labels"))
    data = _integers(d[b"data"], np.uint8, f"cifar: {path} data")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"cifar: {path} holds data of shape {data.shape}, expected (N, 3072)")
    labels = _integers(d[b"labels"], np.int32, f"cifar: {path} labels")
    if len(labels) != len(data):
        raise ValueError(f"cifar: {path} has {len(data)} images but {len(labels)} labels")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def read(path):
    """(classes, {"train": (images, labels) or None, "val": ...}) from a cifar-10-batches-py folder."""
    path = Path(path)
    meta = _unpickle(path / META_FILE, (b"label_names",))
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    parts = [_load(path / n) for n in TRAIN_FILES if (path / n).is_file()]
    splits = {"train": None, "val": None}
    if parts:
        splits["train"] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if (path / TEST_FILE).is_file():
        splits["val"] = _load(path / TEST_FILE)
    for name, s in splits.items():
        if s is not None and len(s[1]) and (s[1].min() < 0 or s[1].max() >= len(classes)):
            raise ValueError(f"cifar: {name} labels outside 0..{len(classes) - 1}")
    return classes, splits
