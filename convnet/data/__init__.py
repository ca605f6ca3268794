"""Datasets, the background batch loader and test-time views.

    ds = convnet.data.open_dataset(path)      # a prepared folder, a cifar-10-batches-py folder, or "builtin"
    loader = convnet.data.Loader(ds.train, 128, train=True, crop=224, mean=ds.mean,
                                 pca=(ds.pca_eigval, ds.pca_eigvec), device="cuda:0", seed=0, epoch=0)
    for images, labels in loader: ...         # float32 NCHW and int32 convnet.Tensors

The on-disk format is described in convnet/data/shards.py.
"""
import json
from pathlib import Path

import numpy as np

from .._checks import json_int, json_number
from . import cifar, shards
from .augment import Views, augment_batch, lighting_shift, view_batch, views
from .loader import Loader

__all__ = ["open_dataset", "Dataset", "Split", "Loader", "views", "view_batch", "Views", "augment_batch",
           "lighting_shift"]


class Split:
    """One split: images uint8 (N, H, W, 3) (memory-mapped from the shards), labels int32 (N,)."""

    def __init__(self, name, images, labels):
        if len(images) != len(labels):
            raise ValueError(f"open_dataset: split '{name}' has {len(images)} images but {len(labels)} labels")
        self.name, self.images, self.labels = name, images, labels

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return f"Split({self.name!r}, {len(self)} images of {tuple(self.images.shape[1:])})"


class Dataset:
    """A dataset: .train and .val (Split or None), .classes, .mean (H, W, 3) float32,
    .pca_eigval (3,), .pca_eigvec (3, 3) with eigenvectors as columns, .image_size."""

    def __init__(self, path, classes, train, val, mean, eigval, eigvec, info=None):
        self.path = Path(path)
        self.classes = list(classes)
        self.train, self.val = train, val
        self.mean = np.asarray(mean, np.float32)
        self.pca_eigval = np.asarray(eigval, np.float32).reshape(3)
        self.pca_eigvec = np.asarray(eigvec, np.float32).reshape(3, 3)
        # a NaN here made every training image NaN: the run stopped at step 0 blaming the input
        # images and suggesting a smaller --lr
        if not all(np.isfinite(a).all() for a in (self.mean, self.pca_eigval, self.pca_eigvec)):
            raise ValueError(f"open_dataset: {path}: the mean image or the PCA lighting values are not finite")
        self.image_size = int(self.mean.shape[0])
        self.info = info or {}

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def pca(self):
        return self.pca_eigval, self.pca_eigvec

    def __repr__(self):
        return (f"Dataset({str(self.path)!r}, {len(self.classes)} classes, image_size={self.image_size}, "
                f"train={self.train!r}, val={self.val!r})")


def _not_prepared(path):
    return ValueError(f"open_dataset: {path} is not a prepared dataset: run python -m convnet.prepare SRC {path} "
                      f"(SRC an ImageNet or folder-per-class tree), or pass a cifar-10-batches-py folder, "
                      f"or 'builtin'")


def open_dataset(path):
    """Open a prepared dataset folder (convnet.prepare / convnet.data.builtin), a CIFAR-10
    cifar-10-batches-py folder, or "builtin" (the default built-in dataset, generated if missing)."""
    if str(path) == "builtin":
        from . import builtin
        path = builtin.ensure()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"open_dataset: no such folder: {path}")
    if not path.is_dir():
        raise _not_prepared(path)
    index_file = path / shards.INDEX
    if index_file.is_file():
        return _open_prepared(path, index_file)
    for folder in (path, path / "cifar-10-batches-py"):
        if cifar.is_cifar_folder(folder):
            return _open_cifar(folder)
    raise _not_prepared(path)


def _file_name(v):
    """A file of the dataset's own folder: a plain name (no folders, not '..')."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v


def _index_damage(index):
    """What is wrong with the structure of a prepared dataset's index.json (as convnet.prepare and
    convnet.data.builtin write it), or None. A hand-edited or damaged value came out as bare
    TypeErrors and KeyErrors ("'int' object is not subscriptable"), or named a file outside the folder."""
    if not json_int(index.get("image_size"), 1):
        return f"image_size {index.get('image_size')!r} is not an integer >= 1"
    classes = index.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return f"classes {classes!r} is not a list of class names"
    if not _file_name(index.get("mean")):
        return f"mean {index.get('mean')!r} is not a file name"
    pca = index.get("pca")
    if not (isinstance(pca, dict) and isinstance(pca.get("eigval"), list) and len(pca["eigval"]) == 3
            and all(json_number(v) for v in pca["eigval"]) and isinstance(pca.get("eigvec"), list)
            and len(pca["eigvec"]) == 3 and all(isinstance(r, list) and len(r) == 3 and all(json_number(v) for v in r)
                                                for r in pca["eigvec"])):
        return f"pca {pca!r} is not 3 eigenvalues and a 3x3 matrix of eigenvectors"
    splits = index.get("splits")
    if not isinstance(splits, dict):
        return f"splits {splits!r} is not a JSON object"
    for name in ("train", "val"):
        info = splits.get(name)
        if info is None:
            continue
        where = f"split {name!r}"
        if not (isinstance(info, dict) and json_int(info.get("count"), 0)):
            return f"{where} {info!r} has no image count"
        if info["count"] == 0:
            continue
        parts = info.get("shards")
        if not (isinstance(parts, list) and all(isinstance(s, dict) and _file_name(s.get("file"))
                                                 and json_int(s.get("count"), 0) for s in parts)):
            return f"{where}: shards {parts!r} is not a list of {{file, count}}"
        if sum(s["count"] for s in parts) != info["count"]:
            return f"{where}: its shards hold {sum(s['count'] for s in parts)} images, its count says {info['count']}"
        if not _file_name(info.get("labels")):
            return f"{where}: labels {info.get('labels')!r} is not a file name"
    return None


def _open_prepared(path, index_file):
    try:
        index = json.loads(index_file.read_text())
    except ValueError as e:
        raise ValueError(f"open_dataset: {index_file} is not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != shards.FORMAT:
        raise _not_prepared(path)
    if index.get("version") != shards.VERSION:
        raise ValueError(f"open_dataset: {path} has format version {index.get('version')}, this convnet reads "
                         f"version {shards.VERSION}: prepare it again")
    damage = _index_damage(index)
    if damage is not None:
        raise ValueError(f"open_dataset: {index_file} is damaged: {damage}; prepare the dataset again")
    splits = {}
    for name in ("train", "val"):
        info = index["splits"].get(name)
        if not info or not info["count"]:
            splits[name] = None
            continue
        missing = [s["file"] for s in info["shards"] if not (path / s["file"]).is_file()]
        if missing or not (path / info["labels"]).is_file():
            raise FileNotFoundError(f"open_dataset: {path} is incomplete: missing {missing or info['labels']}")
        images = shards.open_images(path, info["shards"], index["image_size"])
        shards.npy_header(path / info["labels"])  # a truncated file: an error naming it
        labels = np.load(path / info["labels"], mmap_mode="r")
        # a label out of range would stop training at the step that first draws it, maybe hours in
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise ValueError(f"open_dataset: {path / info['labels']} holds {labels.dtype} {labels.shape}, "
                             f"not integer labels (N,)")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(index["classes"])):
            raise ValueError(f"open_dataset: {path / info['labels']} holds labels from {labels.min()} to "
                             f"{labels.max()}, outside 0..{len(index['classes']) - 1} ({len(index['classes'])} classes)")
        splits[name] = Split(name, images, labels)
    size = index["image_size"]
    dtype, shape = shards.npy_header(path / index["mean"])
    # Dataset.image_size comes from the mean image: a wrong one made "--crop 56 is larger than the
    # dataset's images (3)" of 64x64 images
    if dtype.kind not in "fiu" or shape != (size, size, 3):
        raise ValueError(f"open_dataset: {path / index['mean']} holds {dtype} {shape}, not the mean of the "
                         f"{size}x{size} RGB images the index describes ({size}, {size}, 3)")
    mean = np.load(path / index["mean"])
    pca = index["pca"]
    return Dataset(path, index["classes"], splits["train"], splits["val"], mean, pca["eigval"], pca["eigvec"],
                   info=index)


def _open_cifar(folder):
    classes, parts = cifar.read(folder)
    splits = {k: (Split(k, *v) if v is not None else None) for k, v in parts.items()}
    stats_split = splits["train"] or splits["val"]
    if stats_split is None:
        raise ValueError(f"open_dataset: {folder} holds no CIFAR batches")
    stats = shards.PixelStats(32, 32)
    stats.add(stats_split.images)
    eigval, eigvec = stats.pca()
    return Dataset(folder, classes, splits["train"], splits["val"], stats.mean_image(), eigval, eigvec,
                   info={"source": "cifar-10"})
