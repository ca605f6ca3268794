"""Prepare an image dataset for training: decode with Pillow, rescale each image so its
shorter side is --size (default 256), take the central size x size crop, and write uint8
shards in the format of convnet/data/shards.py, plus labels, class names, the mean training
image and the RGB PCA of the training pixels.

    python -m convnet.prepare SRC DST [--size 256] [--workers N] [--val-labels FILE]

SRC layouts:
  * ILSVRC-2012: SRC/train/<wnid>/*.JPEG and SRC/val/ either in class folders
    (SRC/val/<wnid>/*.JPEG) or flat (SRC/val/*.JPEG) with a ground-truth file: the devkit's
    numbered list (ILSVRC2012_validation_ground_truth.txt: line i is the 1-based class id of
    the i-th file in name order; the ids follow --synsets FILE, one wnid per line in id order,
    or the devkit's meta.mat beside the list when scipy is installed) or a CSV of
    filename,wnid (LOC_val_solution.csv works: the first word of the second column is used).
    The ground-truth file is --val-labels, or found by name in SRC or SRC/val.
  * any folder-per-class tree: SRC/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp,tif} (all training
    images), or SRC/train and SRC/val laid out that way.
Class names are the sorted training folder names; labels index them.

Messy files: grayscale, CMYK, palette and alpha images are converted to RGB; 16-bit images
have their 0..65535 range scaled to 0..255; the EXIF orientation is applied (a photo taken
with the camera held sideways is stored upright); the content decides the decoder (a PNG named
.JPEG is read as PNG). Truncated or unreadable files, and images of 32-bit integer or float
samples (which have no standard range to scale: convert them to 8 or 16 bits), are skipped and
listed with the reason in DST/prepare-report.txt; the run never stops for one file.

Work is split into shards of --shard-size images, spread over all cores. Each shard is
written to a temporary name then renamed, and its metadata (<split>-NNNNN.json) is written
last, so an interrupted run resumes where it stopped: rerun the same command and finished
shards are skipped. A worker process that dies (e.g. killed for memory) ends the run with an
error; rerunning resumes it the same way. One run writes into DST at a time (DST/.lock): a
second one started meanwhile waits, then finds the work done. DST must be new, or hold a preparation of the same
files with the same settings (its prepare-plan.json): a folder holding another dataset (the
built-in one, say) is refused, never overwritten. JPEGs are decoded at reduced size when they
are at least twice the target (Pillow's draft mode), which is where most of the speed over a
plain loop comes from.
"""
import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from . import shards

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
GROUND_TRUTH_NAMES = ["ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv", "val_labels.csv",
                      "val.csv", "val_labels.txt", "val.txt"]
REPORT = "prepare-report.txt"
PLAN = "prepare-plan.json"


class PrepareError(ValueError):
    """A problem with the source tree or the arguments (reported without a traceback by the CLI)."""


# ---- finding the images ----

def _images_under(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                found.append(Path(root) / f)
    return found


def scan_class_tree(folder, classes=None):
    """[(path, class index)] of a folder-per-class tree, and the class names. Every class
    folder must hold at least one image; with `classes` given, folder names must be among them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"prepare: no such folder: {folder}")
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise PrepareError(f"prepare: {folder} has no class folders (expected {folder}/<class>/<images>)")
    if classes is None:
        classes = names
    lookup = {c: i for i, c in enumerate(classes)}
    items = []
    for name in names:
        if name not in lookup:
            raise PrepareError(f"prepare: {folder / name} is not one of the {len(classes)} training classes")
        files = _images_under(folder / name)
        if not files:
            raise PrepareError(f"prepare: class folder {folder / name} is empty (no image files)")
        items += [(f, lookup[name]) for f in files]
    return items, classes


def _read_synsets(path):
    return [line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()]


def _devkit_ids(gt_file, synsets):
    """The class names of the devkit's ILSVRC2012_IDs (1-based), in id order."""
    if synsets:
        return _read_synsets(synsets)
    meta = Path(gt_file).with_name("meta.mat")
    if meta.is_file():
        try:
            import scipy.io
        except ImportError:
            raise PrepareError(f"prepare: reading {meta} needs scipy; or pass --synsets FILE (one wnid per line, "
                               f"in ILSVRC2012_ID order)") from None
        m = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in m}
        return [ids[i] for i in range(1, len(ids) + 1) if i in ids]
    raise PrepareError(f"prepare: {gt_file} numbers the classes: pass --synsets FILE (one wnid per line in id "
                       f"order; 'sorted' for the sorted training folder names) or put the devkit's meta.mat "
                       f"beside it")


def read_ground_truth(gt_file, files, classes, synsets=None):
    """Labels of the flat validation files from a numbered list or a filename,class CSV."""
    gt_file = Path(gt_file)
    if not gt_file.is_file():
        raise PrepareError(f"prepare: no such ground-truth file: {gt_file}")
    lines = [ln.strip() for ln in gt_file.read_text().splitlines() if ln.strip()]
    lookup = {c: i for i, c in enumerate(classes)}
    if lines and all(re.fullmatch(r"\d+", ln) for ln in lines):  # the devkit's numbered list
        if len(lines) != len(files):
            raise PrepareError(f"prepare: label file {gt_file} has {len(lines)} labels but the validation folder "
                               f"has {len(files)} images")
        id_names = list(classes) if synsets == "sorted" else _devkit_ids(gt_file, synsets)
        labels = []
        for n, ln in enumerate(lines):
            k = int(ln)
            if not 1 <= k <= len(id_names) or id_names[k - 1] not in lookup:
                raise PrepareError(f"prepare: label file {gt_file} line {n + 1}: class id {k} is not a training "
                                   f"class")
            labels.append(lookup[id_names[k - 1]])
        return labels
    rows = list(csv.reader(lines))
    first_class = lambda row: row[1].split()[0] if len(row) > 1 and row[1].split() else ""  # noqa: E731
    if rows and first_class(rows[0]) not in lookup:
        rows = rows[1:]  # a header line ("ImageId,PredictionString")
    by_name = {}
    for row in rows:
        name, cls = row[0].strip(), first_class(row)
        if cls not in lookup:
            raise PrepareError(f"prepare: label file {gt_file}: class {cls!r} of {name!r} is not a training class "
                               f"(expected 'filename,class' lines)")
        by_name[name] = lookup[cls]
    labels, missing = [], []
    for f in files:
        f = Path(f)
        k = by_name.get(f.name, by_name.get(f.stem))
        if k is None:
            missing.append(f.name)
        labels.append(k)
    listed = set(by_name) - {Path(f).name for f in files} - {Path(f).stem for f in files}
    if missing or listed:
        raise PrepareError(f"prepare: label file {gt_file} does not match the validation images: "
                           f"{len(missing)} images without a label (e.g. {missing[:3]}), "
                           f"{len(listed)} labels without an image (e.g. {sorted(listed)[:3]})")
    return labels


def find_ground_truth(src):
    for folder in (Path(src), Path(src) / "val"):
        for name in GROUND_TRUTH_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def scan_source(src, val_labels=None, synsets=None):
    """{"train": [(path, label)], "val": [...]} and the class names."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"prepare: no such folder: {src}")
    if not (src / "train").is_dir():
        train, classes = scan_class_tree(src)
        return {"train": train, "val": []}, classes
    train, classes = scan_class_tree(src / "train")
    val = []
    vdir = src / "val"
    if vdir.is_dir():
        flat = [f for f in sorted(vdir.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if flat:
            gt = Path(val_labels) if val_labels else find_ground_truth(src)
            if gt is None:
                raise PrepareError(f"prepare: {vdir} holds images without class folders: give their labels with "
                                   f"--val-labels FILE (devkit ground truth or a filename,class CSV)")
            val = list(zip(flat, read_ground_truth(gt, flat, classes, synsets)))
        elif any(d.is_dir() for d in vdir.iterdir()):
            val, _ = scan_class_tree(vdir, classes)
        else:
            raise PrepareError(f"prepare: validation folder {vdir} is empty")
    return {"train": train, "val": val}, classes


# ---- decoding ----

def load_image(path, size):
    """uint8 (size, size, 3): shorter side scaled to `size`, central square crop. Raises on bad files."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at 1/2, 1/4, 1/8 scale when still >= size
        w, h = img.size
        if w < 1 or h < 1:
            raise ValueError("empty image")
        if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: a camera held sideways
            img = ImageOps.exif_transpose(img)
        # convert("RGB") clips 16- and 32-bit values to 0..255: a 0..65535 image came out white
        if img.mode.startswith("I;16") or (img.mode == "I" and img.format in ("PNG", "PPM")):
            # 16-bit samples (Pillow reads 16-bit PGM, and 16-bit PNG before Pillow 10.4, as "I")
            img = Image.fromarray(np.rint(np.asarray(img, np.float32) * (255 / 65535)).astype(np.uint8))
        elif img.mode in ("I", "F"):  # 32-bit integer or float samples: no standard range to scale
            raise ValueError(f"{'float' if img.mode == 'F' else 'integer'} 32-bit samples (mode {img.mode}) have "
                             f"no standard range: convert the image to 8 or 16 bits")
        img = img.convert("RGB")  # grayscale, CMYK, palette, alpha -> RGB (also forces decoding)
        w, h = img.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # the central square
        img = img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)  # reduce() first: faster, same look
        return np.asarray(img, dtype=np.uint8)


def _prepare_shard(job):
    """Decode one shard's files and write it. Returns (split, shard index, count, skipped)."""
    import warnings

    from PIL import Image

    dst, split, index, items, size, root = job
    dst = Path(dst)
    out = np.empty((len(items), size, size, 3), np.uint8)
    labels, files, skipped = [], [], []
    n = 0
    for path, label in items:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                out[n] = load_image(path, size)
        except Exception as e:  # one bad file never stops the run: report it
            skipped.append([_rel(path, root), f"{type(e).__name__}: {e}"])
            continue
        labels.append(int(label))
        files.append(_rel(path, root))
        n += 1
    out = out[:n]
    name = f"{split}-{index:05d}"
    shards.atomic_save_npy(dst / f"{name}.npy", out)
    if split == "train":
        stats = shards.PixelStats(size, size)
        stats.add(out)
        tmp = dst / f".{name}.stats.tmp{os.getpid()}.npz"
        np.savez(tmp, **stats.to_arrays())
        os.replace(tmp, dst / f"{name}.stats.npz")
    shards.atomic_write_json(dst / f"{name}.json", {"count": n, "labels": labels, "files": files,
                                                    "skipped": skipped})
    return split, index, n, skipped


def _rel(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# ---- progress ----

class _Progress:
    def __init__(self, total, initial, enabled):
        self.total, self.done, self.enabled = total, initial, enabled
        self.bar, self.last, self.start = None, 0.0, time.time()
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="img", desc="prepare", smoothing=0.05)
            except ImportError:
                pass

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.time() - self.last > 5 or self.done >= self.total):
            self.last = time.time()
            rate = self.done / max(time.time() - self.start, 1e-9)
            print(f"prepare: {self.done}/{self.total} images ({100 * self.done / max(self.total, 1):.1f}%, "
                  f"{rate:.0f}/s)", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---- the whole run ----

def _plan_digest(plan, size, classes, src):
    """Identifies the work: files (relative to SRC, so SRC may be spelled differently), labels,
    shard boundaries, size and classes."""
    h = hashlib.sha256(json.dumps([size, classes], sort_keys=True).encode())
    for split, jobs in plan.items():
        for i, items in enumerate(jobs):
            h.update(f"shard {split} {i}\n".encode())
            for path, label in items:
                h.update(f"{_rel(path, src)}\0{label}\n".encode())
    return h.hexdigest()


def _refuse_unplanned_dataset(dst):
    """A DST without our plan file may still hold a dataset (the built-in one, or one prepared
    by hand or by an older convnet): writing there would replace its files."""
    ours = [f.name for f in sorted(dst.iterdir()) if f.name in (shards.INDEX, "mean.npy", REPORT) or
            re.fullmatch(r"(train|val)-(\d+\.npy|\d+\.json|\d+\.stats\.npz|labels\.npy)", f.name)]
    if ours:
        try:
            what = f"a dataset (source: {json.loads((dst / shards.INDEX).read_text())['source']})"
        except (OSError, ValueError, TypeError, KeyError):
            what = "dataset files"
        raise PrepareError(f"prepare: {dst} already holds {what} that this command did not prepare "
                           f"({', '.join(ours[:4])}{', ...' if len(ours) > 4 else ''}; no {PLAN}): use "
                           f"another folder, or delete those files first")


def prepare(src, dst, size=256, shard_size=1000, workers=None, val_labels=None, synsets=None, progress=True,
            stop_after_shards=None):
    """Prepare SRC into DST (see the module docstring). Returns DST. stop_after_shards (for
    tests) stops after that many new shards, as an interrupted run would."""
    if size < 8:
        raise PrepareError(f"prepare: --size must be at least 8, got {size}")
    if shard_size < 1:
        raise PrepareError(f"prepare: --shard-size must be positive, got {shard_size}")
    src, dst = Path(src), Path(dst)
    items, classes = scan_source(src, val_labels, synsets)
    if not items["train"] and not items["val"]:
        raise PrepareError(f"prepare: no images found under {src}")
    plan = {split: [items[split][i:i + shard_size] for i in range(0, len(items[split]), shard_size)]
            for split in ("train", "val")}
    # one writer at a time: a second run of the same command waits, then finds the work done
    with shards.folder_lock(dst, f"prepare: waiting for another process preparing {dst}"):
        return _prepare_into(src, dst, items, classes, plan, size, workers, shard_size, progress, stop_after_shards)


def _prepare_into(src, dst, items, classes, plan, size, workers, shard_size, progress, stop_after_shards):
    """prepare(), with DST's lock held."""
    digest = _plan_digest(plan, size, classes, src)
    plan_file = dst / PLAN
    if plan_file.is_file():
        old = json.loads(plan_file.read_text())
        if old.get("digest") != digest:
            raise PrepareError(f"prepare: {dst} holds a preparation of other files or settings "
                               f"(source {old.get('source')}, size {old.get('size')}): use another folder "
                               f"or empty it")
    else:
        _refuse_unplanned_dataset(dst)
        shards.atomic_write_json(plan_file, {"digest": digest, "source": str(src), "size": size,
                                             "shard_size": shard_size})
    (dst / shards.INDEX).unlink(missing_ok=True)
    for stale in dst.glob(".*.tmp*"):  # leftovers of an interrupted write
        stale.unlink(missing_ok=True)

    def finished(split, i):
        name = f"{split}-{i:05d}"
        return (dst / f"{name}.json").is_file() and (dst / f"{name}.npy").is_file() and \
            (split != "train" or (dst / f"{name}.stats.npz").is_file())

    jobs = [(str(dst), split, i, chunk, size, str(src)) for split in ("train", "val")
            for i, chunk in enumerate(plan[split]) if not finished(split, i)]
    total = sum(len(x) for x in items.values())
    bar = _Progress(total, total - sum(len(j[3]) for j in jobs), progress)
    if stop_after_shards is not None:
        jobs = jobs[:stop_after_shards]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    try:
        if workers == 1:
            for job in jobs:
                bar.update(len(job[3]))
                _prepare_shard(job)
        else:
            # Not multiprocessing.Pool: it waits forever for the task of a worker that died (the
            # out-of-memory killer); this pool fails the remaining tasks with BrokenProcessPool.
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            pool = ProcessPoolExecutor(workers, mp_context=ctx)
            try:
                pending = {pool.submit(_prepare_shard, job) for job in jobs}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        split, i, n, skipped = f.result()
                        bar.update(len(plan[split][i]))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except BrokenProcessPool:
        raise PrepareError(f"prepare: a worker process died (killed, maybe by the out-of-memory killer); the "
                           f"finished shards in {dst} are kept: rerun the same command to resume (with fewer "
                           f"--workers if memory is short)") from None
    finally:
        bar.close()
    if stop_after_shards is not None:
        return dst
    return finish(dst, plan, classes, size)


def finish(dst, plan, classes, size):
    """Combine the finished shards: labels, mean image, PCA, report, and index.json last."""
    splits, stats, report = {}, shards.PixelStats(size, size), []
    for split, jobs in plan.items():
        if not jobs:
            continue
        metas = [json.loads((dst / f"{split}-{i:05d}.json").read_text()) for i in range(len(jobs))]
        labels = np.array([lab for m in metas for lab in m["labels"]], np.int32)
        shards.atomic_save_npy(dst / f"{split}-labels.npy", labels)
        for m in metas:
            report += [(split, f, why) for f, why in m["skipped"]]
        splits[split] = {"count": int(len(labels)), "labels": f"{split}-labels.npy",
                         "shards": [{"file": f"{split}-{i:05d}.npy", "count": m["count"]} for i, m in enumerate(metas)]}
        if split == "train":
            for i in range(len(jobs)):
                with np.load(dst / f"train-{i:05d}.stats.npz") as z:
                    stats.merge(shards.PixelStats.from_arrays(z))
    lines = [f"# files skipped by convnet.prepare: {len(report)}", "# split\tfile\treason"]
    lines += [f"{s}\t{f}\t{why}" for s, f, why in report]
    shards.atomic_write_bytes(dst / REPORT, ("\n".join(lines) + "\n").encode())  # before the error below names it
    if stats.count == 0:
        if "val" not in splits or splits["val"]["count"] == 0:
            raise PrepareError(f"prepare: no image could be read (see {dst / REPORT})")
        for s in splits["val"]["shards"]:  # no training images: statistics of the validation images
            stats.add(np.load(dst / s["file"], mmap_mode="r"))
    shards.atomic_save_npy(dst / "mean.npy", stats.mean_image())
    eigval, eigvec = stats.pca()
    shards.write_index(dst, size, classes, splits, "mean.npy", eigval, eigvec, shards.PCA_NOTE,
                       extra={"source": "prepare", "skipped": len(report)})
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m convnet.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="source tree (ILSVRC-2012 layout or folder-per-class)")
    ap.add_argument("dst", help="output folder (created; rerun the same command to resume)")
    ap.add_argument("--size", type=int, default=256, help="side of the stored square images (default 256)")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per shard file (default 1000)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--val-labels", default=None, help="ground truth of a flat validation folder")
    ap.add_argument("--synsets", default=None,
                    help="class order of a numbered ground-truth list: a file with one wnid per line, or 'sorted'")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        dst = prepare(args.src, args.dst, args.size, args.shard_size, args.workers, args.val_labels, args.synsets,
                      progress=not args.quiet)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nprepare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    index = json.loads((dst / shards.INDEX).read_text())
    counts = ", ".join(f"{k} {v['count']}" for k, v in index["splits"].items())
    print(f"prepare: {len(index['classes'])} classes, {counts} images of {args.size}x{args.size} in "
          f"{time.time() - t0:.1f} s -> {dst}; {index['skipped']} files skipped (see {dst / REPORT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
