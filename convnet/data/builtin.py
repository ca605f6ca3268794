"""The built-in dataset: generated images of shapes and textures, deterministic from a seed,
written in the prepared-dataset shard format (convnet.data.shards).

Each image holds one object of its class, drawn at a random position, scale (radius 24-42% of
the image side), rotation and colour over a cluttered background (a colour gradient, soft
colour waves, two thin lines and two small dots of other colours) with moderate pixel noise.
Colours are drawn independently of the class, so only shape and texture tell classes apart.

    python -m convnet.data.builtin [DST] [--size 64] [--seed 0]   # generate
    python -m convnet.data.builtin --linear-baseline              # softmax regression on raw pixels

Generation is split into chunks of about CHUNK_PIXELS pixels, each drawn from its own generator seeded by
(seed, split, chunk), so the bytes do not depend on the number of worker processes. One process at
a time generates into a folder (holding DST/.lock); runs started at once on a fresh cache wait
for it and use what it made. DST must be new or hold a built-in dataset (of any settings: it is
made again): a folder holding another dataset or other files is refused, never overwritten.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import _files, _signals
from .._checks import integer
from . import shards

CLASSES = ["circle", "square", "triangle", "star", "ring", "ellipse", "plus", "crescent", "stripes",
           "checker", "dots", "ell"]
CHUNK_PIXELS = 500 * 64 * 64  # images per chunk: 500 at 64x64, fewer when larger (bounded memory)
_SPLIT_IDS = {"train": 1, "val": 2}
# What a generation writes (replacing what is there): a folder holding other names is not ours.
_OWN_FILES = {shards.INDEX, "mean.npy"} | {f"{s}-{x}.npy" for s in _SPLIT_IDS for x in ("00000", "labels")}


class BuiltinError(ValueError):
    """A folder the built-in dataset may not be written into (reported without a traceback by the CLI)."""


# ---- object masks: u, v are (n, S, S) coordinates in the object's rotated frame, in units of
# its radius (the object fits in the unit disk); p holds per-image parameters shaped (n, 1, 1).

def _circle(u, v, p):
    return u * u + v * v < 1.0


def _square(u, v, p):
    return np.maximum(np.abs(u), np.abs(v)) < 0.72


def _triangle(u, v, p):
    inside = np.ones(u.shape, bool)
    for phi in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):  # outward normals of the three edges
        inside &= u * np.cos(phi) + v * np.sin(phi) < 0.5
    return inside


def _star(u, v, p):
    r = np.sqrt(u * u + v * v)
    phase = (np.arctan2(v, u) * (5 / (2 * np.pi))) % 1.0
    tip = np.abs(phase - 0.5) * 2.0  # 1 at a point of the star, 0 between two points
    return r < 0.42 + 0.58 * tip ** 1.5


def _ring(u, v, p):
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.56 ** 2)


def _ellipse(u, v, p):
    return u * u + (v / p["aspect"]) ** 2 < 1.0


def _plus(u, v, p):
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.27) & (av < 0.95)) | ((av < 0.27) & (au < 0.95))


def _crescent(u, v, p):
    return (u * u + v * v < 1.0) & ((u - 0.5) ** 2 + v * v > 0.8 ** 2)


def _region(u, v, p):
    """Textures fill a disk or a square, chosen per image, so the outline does not give them away."""
    disk = u * u + v * v < 0.95
    square = np.maximum(np.abs(u), np.abs(v)) < 0.75
    return np.where(p["square_region"], square, disk)


def _stripes(u, v, p):
    return _region(u, v, p) & (np.cos(np.pi * u * p["freq"]) > 0)


def _checker(u, v, p):
    f = p["freq"] * 0.6
    return _region(u, v, p) & ((np.floor(u * f) + np.floor(v * f)) % 2 == 0)


def _dots(u, v, p):
    f = p["freq"] * 0.75
    du, dv = (u * f) % 1.0 - 0.5, (v * f) % 1.0 - 0.5
    return _region(u, v, p) & (du * du + dv * dv < 0.32 ** 2)


def _ell(u, v, p):
    return (((u > -0.8) & (u < -0.3)) & (np.abs(v) < 0.8)) | (((v > 0.3) & (v < 0.8)) & (np.abs(u) < 0.8))


MASKS = [_circle, _square, _triangle, _star, _ring, _ellipse, _plus, _crescent, _stripes, _checker, _dots, _ell]


def _contrasting_colours(rng, background, min_dist=110.0):
    """Object colours at least min_dist (RGB distance) from each background colour."""
    colour = rng.uniform(0, 255, background.shape)
    for _ in range(8):
        close = np.linalg.norm(colour - background, axis=1) < min_dist
        if not close.any():
            break
        colour[close] = rng.uniform(0, 255, (close.sum(), 3))
    close = np.linalg.norm(colour - background, axis=1) < min_dist
    colour[close] = 255.0 - background[close]
    return colour


def _paint(planes, where, colour):
    """Set the pixels `where` (n, S, S) of each image to its colour (n, 3); planes is (3, n, S, S)."""
    for c in range(3):
        np.copyto(planes[c], colour[:, c, None, None], where=where)


def render(labels, size, rng):
    """uint8 (n, size, size, 3) images of the given class labels."""
    n = len(labels)
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    xs, ys = xx / S - 0.5, yy / S - 0.5  # in [-0.5, 0.5]
    col = lambda a: a[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1), to broadcast over pixels

    # Background: base colour + gradient + two soft colour waves. Planes (3, n, S, S) while drawing.
    base = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    grad = rng.uniform(-70, 70, (n, 2)).astype(np.float32)
    shade = col(grad[:, 0]) * xs + col(grad[:, 1]) * ys
    planes = np.stack([shade + col(base[:, c]) for c in range(3)])
    for _ in range(2):
        ang = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        freq = rng.uniform(1.0, 3.0, n).astype(np.float32) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        amp = rng.uniform(-18, 18, (n, 3)).astype(np.float32)
        wave = np.sin(col(freq) * (col(np.cos(ang)) * xs + col(np.sin(ang)) * ys) + col(phase))
        for c in range(3):
            planes[c] += wave * col(amp[:, c])

    # Clutter: thin lines and small dots in random colours, behind the object.
    for _ in range(2):
        p0 = rng.uniform(0, S, (n, 2)).astype(np.float32)
        p1 = rng.uniform(0, S, (n, 2)).astype(np.float32)
        colour = rng.uniform(0, 255, (n, 3)).astype(np.float32)
        d = p1 - p0
        rx, ry = xx - col(p0[:, 0]), yy - col(p0[:, 1])
        t = np.clip((rx * col(d[:, 0]) + ry * col(d[:, 1])) / col(np.maximum((d * d).sum(1), 1e-6)), 0, 1)
        dist2 = (rx - t * col(d[:, 0])) ** 2 + (ry - t * col(d[:, 1])) ** 2  # to the nearest point of the segment
        _paint(planes, dist2 < (0.014 * S) ** 2, colour)
    for _ in range(2):
        c = rng.uniform(0, S, (n, 2)).astype(np.float32)
        rad = rng.uniform(0.015, 0.035, n).astype(np.float32) * S
        colour = rng.uniform(0, 255, (n, 3)).astype(np.float32)
        _paint(planes, (xx - col(c[:, 0])) ** 2 + (yy - col(c[:, 1])) ** 2 < col(rad ** 2), colour)

    # The object.
    radius = rng.uniform(0.24, 0.42, n).astype(np.float32) * S
    cx = rng.uniform(radius, S - radius).astype(np.float32)
    cy = rng.uniform(radius, S - radius).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    params = {"aspect": rng.uniform(0.35, 0.6, n).astype(np.float32),
              "freq": rng.uniform(2.6, 4.0, n).astype(np.float32),
              "square_region": rng.random(n) < 0.5}
    colour = _contrasting_colours(rng, base).astype(np.float32)
    noise_sigma = rng.uniform(2, 7, n).astype(np.float32)
    dx, dy = xx - col(cx), yy - col(cy)
    ca, sa, r = col(np.cos(angle)), col(np.sin(angle)), col(radius)
    u = (dx * ca + dy * sa) / r
    v = (-dx * sa + dy * ca) / r
    mask = np.zeros((n, S, S), bool)
    for k in np.unique(labels):
        sel = np.nonzero(labels == k)[0]
        p = {key: val[sel][:, None, None] for key, val in params.items()}
        mask[sel] = MASKS[k](u[sel], v[sel], p)
    _paint(planes, mask, colour)

    # Pixel noise: uniform with standard deviation noise_sigma (cheaper to draw than Gaussian).
    img = np.empty((n, S, S, 3), np.uint8)
    for c in range(3):
        noise = rng.random((n, S, S), dtype=np.float32)
        planes[c] += (noise - 0.5) * col(noise_sigma * np.float32(12 ** 0.5))
        np.clip(np.rint(planes[c]), 0, 255, out=planes[c])
        img[..., c] = planes[c]
    return img


def _render_chunk(args):
    seed, split_id, chunk, labels, size = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, chunk]))
    return render(labels, size, rng)


def split_labels(seed, split, n, num_classes):
    """Balanced labels in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], 7]))
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


# Bump when the drawing changes: a cached dataset made by another version is then regenerated.
GENERATOR_VERSION = 2


def _params(num_train, num_val, size, seed, num_classes):
    return {"generator": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
            "num_classes": num_classes}


def _check_args(num_train, num_val, size, seed, num_classes):
    """The settings as Python ints, checked before anything is locked or deleted: a NumPy integer
    size went into a shard's header as `np.int64(16)` (unreadable), a NumPy num_train failed in
    json.dumps after all the rendering, size=24.5 only after the old index.json was deleted."""
    kw = {"num_train": integer(num_train, "builtin: num_train", 0), "num_val": integer(num_val, "builtin: num_val", 0),
          "size": integer(size, "builtin: size", 16), "seed": integer(seed, "builtin: seed", 0),
          "num_classes": integer(num_classes, "builtin: num_classes")}
    if not 2 <= kw["num_classes"] <= len(CLASSES):
        raise ValueError(f"builtin: num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
    if kw["num_train"] + kw["num_val"] == 0:
        raise ValueError("builtin: need a positive number of images")
    return kw


def _refuse_other_files(dst):
    """Generating replaces index.json, mean.npy and the shards: given a prepared ImageNet folder it
    wrote over them and left the other shards as orphans. So DST must be new or hold a built-in
    dataset (any settings; one cut short or damaged is made again), nothing else but hidden files
    (.lock, temporaries, the user's dotfiles, all left alone)."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise BuiltinError(f"builtin: {dst} is not a folder")
    visible = [f for f in sorted(dst.iterdir()) if not f.name.startswith(".")]
    other = [f.name for f in visible if not (f.name in _OWN_FILES and f.is_file())]
    try:
        index = json.loads((dst / shards.INDEX).read_text())
        source = index.get("source") if isinstance(index, dict) else "builtin"
    except (OSError, ValueError):  # none (a generation cut short) or damaged
        source = "builtin"
    if source == "builtin" and not other:
        return
    what = f"a dataset (source: {source})" if source != "builtin" else "files that are not the built-in dataset's"
    shown = other or [f.name for f in visible]
    raise BuiltinError(f"builtin: {dst} already holds {what} ({', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''}"
                       f"): use another folder, or delete those files first")


def _locked(dst, verbose):
    _refuse_other_files(dst)  # also before the lock: a refused folder is left as it was, without a .lock
    return shards.folder_lock(dst, f"builtin: waiting for another process generating {dst}" if verbose else None)


def generate(dst, num_train=10000, num_val=2000, size=64, seed=0, num_classes=10, workers=None, verbose=False):
    """Write the built-in dataset to folder dst (new, or replacing a built-in dataset there) and
    return its path. Deterministic from the arguments (not from `workers`). One process at a
    time generates into a folder; others wait."""
    kw = _check_args(num_train, num_val, size, seed, num_classes)
    if workers is not None:
        workers = integer(workers, "builtin: workers", 1)
    dst = Path(dst)
    with _locked(dst, verbose):
        return _generate(dst, **kw, workers=workers, verbose=verbose)


def _generate(dst, num_train, num_val, size, seed, num_classes, workers, verbose):
    """generate(), with the lock held, on checked settings."""
    _refuse_other_files(dst)
    (dst / shards.INDEX).unlink(missing_ok=True)
    # leftovers of an interrupted generation (.NAME.tmpPID of a dead process; a live one's are kept)
    _files.remove_stale_temporaries(dst)
    workers = workers or os.cpu_count() or 1
    t0 = time.time()
    jobs, plan = [], []
    chunk = max(8, CHUNK_PIXELS // (size * size))
    for split, count in (("train", num_train), ("val", num_val)):
        labels = split_labels(seed, split, count, num_classes)
        for c, start in enumerate(range(0, count, chunk)):
            jobs.append((seed, _SPLIT_IDS[split], c, labels[start:start + chunk], size))
            plan.append(split)
    # Chunks arrive in order and go straight into each split's (memory-mapped) shard file.
    counts = {"train": num_train, "val": num_val}
    stats_split = "train" if num_train else "val"  # no training split: statistics of the val images
    out, pos, splits, stats = {}, {}, {}, shards.PixelStats(size, size)
    for split, count in counts.items():
        if count:
            tmp = _files.temporary(dst / f"{split}-00000.npy")
            out[split] = (tmp, np.lib.format.open_memmap(tmp, "w+", np.uint8, (count, size, size, 3)))
            pos[split] = 0
    pool = None
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        # the workers leave Ctrl-C to this process, which stops them (pool.terminate() below)
        pool = ctx.Pool(min(workers, len(jobs)), initializer=_signals.worker_init, initargs=(True,))
    try:
        chunks = pool.imap(_render_chunk, jobs) if pool else map(_render_chunk, jobs)
        for split, images in zip(plan, chunks):
            out[split][1][pos[split]:pos[split] + len(images)] = images
            pos[split] += len(images)
            if split == stats_split:
                stats.add(images)
    finally:
        if pool:
            pool.terminate()
    for split, (tmp, images) in out.items():
        images.flush()
        del images
        os.replace(tmp, dst / f"{split}-00000.npy")
        labels = np.concatenate([j[3] for j, s in zip(jobs, plan) if s == split])
        shards.atomic_save_npy(dst / f"{split}-labels.npy", labels)
        splits[split] = {"count": counts[split], "shards": [{"file": f"{split}-00000.npy", "count": counts[split]}],
                         "labels": f"{split}-labels.npy"}
    out.clear()
    shards.atomic_save_npy(dst / "mean.npy", stats.mean_image())
    eigval, eigvec = stats.pca()
    shards.write_index(dst, size, CLASSES[:num_classes], splits, "mean.npy", eigval, eigvec, shards.PCA_NOTE,
                       extra={"source": "builtin", "builtin": _params(num_train, num_val, size, seed, num_classes)})
    if verbose:
        print(f"builtin: {num_train} train + {num_val} val images of {size}x{size} in {time.time() - t0:.1f} s "
              f"-> {dst}", file=sys.stderr)
    return dst


def default_path(size=64, seed=0, num_train=10000, num_val=2000, num_classes=10):
    """$CONVNET_DATA (or ~/.cache/convnet) / builtin-<size>-s<seed>[-<train>-<val>-c<classes>]."""
    root = Path(os.environ.get("CONVNET_DATA") or Path.home() / ".cache" / "convnet")
    name = f"builtin-{size}-s{seed}"
    if (num_train, num_val, num_classes) != (10000, 2000, 10):
        name += f"-{num_train}-{num_val}-c{num_classes}"
    return root / name


def ensure(path=None, num_train=10000, num_val=2000, size=64, seed=0, num_classes=10, verbose=True):
    """The path of the built-in dataset with these parameters, generating it if missing."""
    kw = _check_args(num_train, num_val, size, seed, num_classes)  # first: size=24.5 found a size-24 dataset
    path = Path(path) if path else default_path(**kw)
    want = _params(**kw)
    if _up_to_date(path, want):
        return path
    with _locked(path, verbose):
        if _up_to_date(path, want):  # made by another process while this one waited for the lock
            return path
        return _generate(path, **kw, workers=None, verbose=verbose)


def _up_to_date(path, want):
    try:
        index = json.loads((path / shards.INDEX).read_text())
        if isinstance(index, dict) and index.get("builtin") == want:  # a damaged one: made again
            from . import open_dataset

            open_dataset(path)  # a damaged cache (a truncated or missing file) fails here and is made again
            return True
    except (OSError, ValueError):
        pass
    return False


def linear_baseline(path, epochs=15, lr=0.5, batch=200, seed=0):
    """Softmax regression on raw pixels (scaled to [0, 1], mean image subtracted), minibatch SGD
    with momentum in NumPy. Returns (train accuracy, val accuracy)."""
    from . import open_dataset

    ds = open_dataset(path)
    if ds.train is None or ds.val is None:  # was an AttributeError on None
        raise ValueError(f"linear_baseline: {path} needs training and validation images")
    mean = ds.mean.reshape(-1) / 255.0
    xtr = np.asarray(ds.train.images, np.float32).reshape(len(ds.train), -1) / 255.0 - mean
    xva = np.asarray(ds.val.images, np.float32).reshape(len(ds.val), -1) / 255.0 - mean
    ytr, yva = np.asarray(ds.train.labels), np.asarray(ds.val.labels)
    k = len(ds.classes)
    rng = np.random.default_rng(seed)
    w = np.zeros((xtr.shape[1], k), np.float32)
    b = np.zeros(k, np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    step = lr / xtr.shape[1] ** 0.5
    for epoch in range(epochs):
        for idx in np.array_split(rng.permutation(len(xtr)), max(len(xtr) // batch, 1)):
            z = xtr[idx] @ w + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), ytr[idx]] -= 1
            gw = xtr[idx].T @ p / len(idx) + 1e-4 * w
            vw = 0.9 * vw - step * gw
            vb = 0.9 * vb - step * p.mean(0)
            w += vw
            b += vb
    acc = lambda x, y: float(((x @ w + b).argmax(1) == y).mean())  # noqa: E731
    return acc(xtr, ytr), acc(xva, yva)


@_signals.command("convnet.data.builtin", "; a rerun generates it again")
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m convnet.data.builtin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dst", nargs="?", default=None, help="output folder (default: the cache location)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=10000)
    ap.add_argument("--num-val", type=int, default=2000)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--force", action="store_true", help="generate even if the folder is up to date")
    ap.add_argument("--linear-baseline", action="store_true",
                    help="also train softmax regression on the raw pixels and print its accuracy")
    ap.add_argument("--preview", default=None, help="write a PNG grid of examples to this file")
    args = ap.parse_args(argv)
    # everything the user can get wrong, before generating (these were tracebacks, some after it)
    try:
        kw = _check_args(args.num_train, args.num_val, args.size, args.seed, args.num_classes)
    except ValueError as e:
        ap.error(str(e))
    if args.linear_baseline and not (args.num_train and args.num_val):
        ap.error("--linear-baseline needs training and validation images (--num-train and --num-val above 0)")
    if args.preview and (Path(args.preview).is_dir() or not Path(args.preview).parent.is_dir()):
        ap.error(f"--preview {args.preview}: not a file in an existing folder")
    path = Path(args.dst) if args.dst else default_path(**kw)
    try:
        if args.force:
            generate(path, verbose=True, **kw)
        else:
            ensure(path, verbose=True, **kw)
    except (BuiltinError, OSError) as e:  # a full disk too: the file is named, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    if args.preview:
        from PIL import Image

        from . import open_dataset
        ds = open_dataset(path)
        split = ds.train or ds.val
        S = ds.image_size
        idx = [np.nonzero(np.asarray(split.labels) == k)[0][:8] for k in range(len(ds.classes))]
        # black where a class has fewer than 8 images (a small dataset may have none of a class)
        grid = np.zeros((len(idx) * S, max(map(len, idx)) * S, 3), np.uint8)
        for k, row in enumerate(idx):
            for j, i in enumerate(row):
                grid[k * S:(k + 1) * S, j * S:(j + 1) * S] = split.images[i]
        Image.fromarray(grid).save(args.preview)
        print(f"preview: {args.preview} (one class per row: {', '.join(ds.classes)})")
    if args.linear_baseline:
        t0 = time.time()
        tr, va = linear_baseline(path)
        print(f"linear softmax regression on raw pixels: train top-1 {tr:.3f}, val top-1 {va:.3f} "
              f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
