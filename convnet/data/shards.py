"""The on-disk format of a prepared dataset (written by convnet.prepare and
convnet.data.builtin, read by open_dataset).

A prepared dataset is a folder holding:

    index.json              {"format": "convnet-shards", "version": 1, "image_size": S,
                             "classes": [names], "splits": {"train": {"count": N,
                             "shards": [{"file": "train-00000.npy", "count": n}, ...],
                             "labels": "train-labels.npy"}, "val": {...}},
                             "mean": "mean.npy", "pca": {"eigval": [3], "eigvec": [[3]x3]},
                             "pca_note": "..."}
    <split>-NNNNN.npy       uint8 (n, S, S, 3) images, RGB, memory-mappable (np.load mmap_mode="r")
    <split>-labels.npy      int32 (N,) labels of the split's images in shard order
    mean.npy                float32 (S, S, 3): the mean training image (per pixel, per channel)

PCA lighting: eigval/eigvec are the eigen-decomposition of the 3x3 covariance of the RGB
values of every pixel of every training image, with values scaled to [0, 1]; eigval is then
multiplied by 255 so that eigvec @ (alpha * eigval) is a shift in 0..255 pixel units (the
convention behind ImageNet's often quoted [55.46, 4.79, 1.15]). eigvec's columns are the
eigenvectors, ordered by decreasing eigenvalue.

index.json is written last (atomically), so a folder without it is an unfinished preparation.
"""
import contextlib
import json
import os
import tokenize
from pathlib import Path

import numpy as np

from .. import _files

FORMAT = "convnet-shards"
VERSION = 1
INDEX = "index.json"


def atomic_write_bytes(path, data):
    """Readers never see half a file (convnet._files)."""
    _files.atomic_write(path, [data])


def atomic_save_npy(path, array):
    with _files.atomic_file(path) as f:
        np.save(f, np.ascontiguousarray(array))


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


class ShardedImages:
    """The images of a split stored in several shard files, read as one (N, H, W, 3) uint8 array.

    Shards are memory-mapped on first use (checked again then: open_dataset's check may be hours
    old). Supports len(), .shape, .dtype, integer / slice / integer-array indexing along the first
    axis, take(indices, out=) and np.asarray (which reads everything)."""

    def __init__(self, paths, counts, item_shape):
        self._paths = [str(p) for p in paths]
        self._arrays = [None] * len(self._paths)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shape = (int(self._starts[-1]),) + tuple(item_shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        _allow_open_files(len(self._paths))

    def _shard(self, s):
        a = self._arrays[s]
        if a is None:  # two threads may both map it: harmless, one mapping is kept
            a = _load_shard(self._paths[s], self._starts[s + 1] - self._starts[s], self.shape[1:])
            self._arrays[s] = a
        return a

    def __len__(self):
        return self.shape[0]

    def take(self, indices, out=None):
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        indices = np.where(indices < 0, indices + n, indices)
        if out is None:
            out = np.empty((len(indices),) + self.shape[1:], np.uint8)
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            out[where] = self._shard(s)[indices[where] - self._starts[s]]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            return self[first][(slice(None),) + rest] if not np.isscalar(first) else self[first][rest]
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            s = int(np.searchsorted(self._starts, k, side="right") - 1)
            return self._shard(s)[k - self._starts[s]]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        a = np.concatenate([np.asarray(self._shard(s)) for s in range(len(self._paths))])
        return a if dtype is None else a.astype(dtype)


def _allow_open_files(n):
    """Each memory-mapped shard holds a file descriptor: raise the soft limit when ImageNet's
    ~1300 shards would pass it (up to the hard limit)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = n + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard),
                                                        hard))
    except (ImportError, ValueError, OSError):
        pass


@contextlib.contextmanager
def folder_lock(folder, waiting=None):
    """Hold an exclusive lock on folder/.lock while writing a dataset there; `waiting`, if given, is
    printed when another process holds it first. Two writers at once deleted each other's
    temporary files as leftovers, and one then crashed in os.replace."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _files.locked(folder / ".lock", waiting):
        yield


def npy_header(path):
    """(dtype, shape) of a .npy file from its header alone, after checking that the file holds as
    many bytes as the header promises: a truncated file otherwise fails when first memory-mapped
    ("mmap length is greater than file size"), maybe hours into training, naming no file."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = readers[version](f)
            need = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # not a .npy file, or a damaged header
        raise ValueError(f"{path} is not a readable .npy file ({e})") from None
    size = os.path.getsize(path)
    if size < need:
        raise ValueError(f"{path} is truncated: {size} bytes, its header ({dtype} {shape}) needs {need}")
    return dtype, shape


def _check_shard(path, count, item_shape):
    """A shard's header against the index, without reading or mapping its data."""
    dtype, shape = npy_header(path)
    if dtype != np.uint8 or shape != (count,) + tuple(item_shape):
        raise ValueError(f"shard {path} holds {dtype} {shape}, the index says {count} uint8 images of "
                         f"{tuple(item_shape)}")


def _load_shard(path, count, item_shape):
    """Memory-map one shard file, which must hold `count` uint8 images of `item_shape`. Its header
    and size are checked first: a shard damaged after open_dataset failed when first used with
    NumPy's "mmap length is greater than file size", or "contains pickled (object) data", naming
    no file. (A file truncated while mapped is another matter: reading the lost pages then kills
    the process with SIGBUS, as with any memory-mapped file.)"""
    _check_shard(path, count, item_shape)
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:  # changed since the check a moment ago
        raise ValueError(f"shard {path} cannot be memory-mapped: {e}") from None


def open_images(folder, shards, image_size):
    """Memory-map a split's shard files: the plain np.memmap when there is one shard, else
    ShardedImages (mapping each shard on first use). Every shard's header and size are checked
    here, so a truncated or wrong shard is named now rather than failing training later."""
    used = [s for s in shards if s["count"] > 0]
    if not used:
        return None
    if len(used) == 1:
        return _load_shard(Path(folder) / used[0]["file"], used[0]["count"], (image_size, image_size, 3))
    for s in used:
        _check_shard(Path(folder) / s["file"], s["count"], (image_size, image_size, 3))
    return ShardedImages([Path(folder) / s["file"] for s in used], [s["count"] for s in used],
                         (image_size, image_size, 3))


def write_index(folder, image_size, classes, splits, mean_file, eigval, eigvec, note, extra=None):
    index = {"format": FORMAT, "version": VERSION, "image_size": int(image_size), "classes": list(classes),
             "splits": splits, "mean": mean_file,
             "pca": {"eigval": [float(v) for v in eigval], "eigvec": [[float(v) for v in r] for r in eigvec]},
             "pca_note": note}
    if extra:
        index.update(extra)
    atomic_write_json(Path(folder) / INDEX, index)


class PixelStats:
    """Running sums for the mean image and the RGB covariance (float64: exact enough for
    ImageNet's 1.2 million images). Mergeable, so each worker keeps its own."""

    def __init__(self, h, w):
        self.count = 0
        self.sum_image = np.zeros((h, w, 3), np.float64)
        self.sum_rgb = np.zeros(3, np.float64)
        self.sum_outer = np.zeros((3, 3), np.float64)

    def add(self, images):
        """images uint8 (n, h, w, 3)."""
        if len(images) == 0:
            return
        self.count += len(images)
        self.sum_image += images.sum(axis=0, dtype=np.float64)
        step = max(1, (1 << 20) // (images.shape[1] * images.shape[2]))  # ~1M pixels at a time
        for i in range(0, len(images), step):
            px = images[i:i + step].reshape(-1, 3).astype(np.float64)
            self.sum_rgb += px.sum(axis=0)
            self.sum_outer += px.T @ px

    def merge(self, other):
        self.count += other.count
        self.sum_image += other.sum_image
        self.sum_rgb += other.sum_rgb
        self.sum_outer += other.sum_outer

    def to_arrays(self):
        return {"count": np.array(self.count), "sum_image": self.sum_image, "sum_rgb": self.sum_rgb,
                "sum_outer": self.sum_outer}

    @classmethod
    def from_arrays(cls, d):
        s = cls(*d["sum_image"].shape[:2])
        s.count = int(d["count"])
        s.sum_image[...] = d["sum_image"]
        s.sum_rgb[...] = d["sum_rgb"]
        s.sum_outer[...] = d["sum_outer"]
        return s

    def mean_image(self):
        return (self.sum_image / max(self.count, 1)).astype(np.float32)

    def pca(self):
        """(eigval (3,), eigvec (3, 3) columns): covariance of RGB in [0, 1], eigval times 255."""
        n = max(self.count * self.sum_image.shape[0] * self.sum_image.shape[1], 1)
        mu = self.sum_rgb / n
        cov = (self.sum_outer / n - np.outer(mu, mu)) / 255.0**2
        return pca_from_cov(cov)


def pca_from_cov(cov):
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    vecs = vecs * np.where(vecs.sum(axis=0) < 0, -1.0, 1.0)  # a fixed sign: deterministic output
    return (vals * 255.0).astype(np.float32), vecs.astype(np.float32)


PCA_NOTE = ("eigen-decomposition of the covariance of the RGB values (scaled to [0,1]) of every pixel of "
            "every training image; eigval multiplied by 255 so eigvec @ (alpha*eigval) is in pixel units")
