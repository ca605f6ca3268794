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
  * any folder-per-class tree: SRC/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp,tif,tiff,ppm} (all training
    images), or SRC/train and SRC/val laid out that way.
Class names are the sorted training folder names; labels index them.

Messy files: grayscale, CMYK, palette and alpha images are converted to RGB; 16-bit images
have their 0..65535 range scaled to 0..255; the EXIF orientation is applied (a photo taken
with the camera held sideways is stored upright); the content decides the decoder (a PNG named
.JPEG is read as PNG). Truncated or unreadable files, and images of 32-bit integer or float
samples (which have no standard range to scale: convert them to 8 or 16 bits), and names that are
not regular files (a FIFO would block the run), are skipped and listed with the reason in
DST/prepare-report.txt; the run never stops for one file. A class none of whose training
images can be read is refused, as an empty class folder is.

Work is split into shards of --shard-size images, spread over all cores. Each shard is
written to a temporary name then renamed, and its metadata (<split>-NNNNN.json) is written
last, so an interrupted run resumes where it stopped: rerun the same command and finished
shards are skipped. A worker process that dies (e.g. killed for memory) ends the run with an
error; rerunning resumes it the same way. One run writes into DST at a time (DST/.lock): a
second one started meanwhile waits, then finds the work done. DST must be new, or hold a preparation of the same
files with the same settings (its prepare-plan.json): a folder holding another dataset (the
built-in one, say) is refused, never overwritten; so is a DST inside the folders searched for
images (SRC/train and SRC/val, or SRC itself), where a rerun would take it for a class.
JPEGs are decoded at reduced size when they are at least twice the target (Pillow's draft
mode), which is where most of the speed over a plain loop comes from.
"""
import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import numbers
import os
import re
import stat
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from .. import _files, _signals
from . import shards

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
GROUND_TRUTH_NAMES = ["ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv", "val_labels.csv",
                      "val.csv", "val_labels.txt", "val.txt"]
REPORT = "prepare-report.txt"
PLAN = "prepare-plan.json"
MAX_SIZE = 4096  # AlexNet's is 256; 4096 is beyond almost any photo's shorter side, and 48 MiB an image stored


class PrepareError(ValueError):
    """A problem with the source tree or the arguments (reported without a traceback by the CLI)."""


# ---- finding the images ----

def _unreadable_folder(e):
    """os.walk's onerror: a folder it cannot list would otherwise be left out without a word."""
    raise PrepareError(f"prepare: cannot read folder {e.filename}: {e.strerror}")


def _listdir(folder):
    try:
        return sorted(Path(folder).iterdir())
    except OSError as e:
        _unreadable_folder(e)


def _images_under(folder):
    found = []
    for root, dirs, files in os.walk(folder, onerror=_unreadable_folder):
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
    names = [d.name for d in _listdir(folder) if d.is_dir() and not d.name.startswith(".")]
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


def _read_text(path, what):
    """The text of a UTF-8 file given by the user (a byte-order mark is dropped)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise PrepareError(f"prepare: cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"prepare: {what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_synsets(path):
    wnids = [line.split()[0] for line in _read_text(path, "--synsets file").splitlines() if line.strip()]
    seen = set()
    for w in wnids:
        if w in seen:  # ids after it would shift by one: every later label wrong
            raise PrepareError(f"prepare: --synsets file {path} lists {w!r} twice")
        seen.add(w)
    return wnids


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
        try:
            m = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
            ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in m}
        except Exception as e:  # scipy's own errors, or a .mat of other fields: KeyError, TypeError, ...
            raise PrepareError(f"prepare: {meta} is not the devkit's meta.mat ({type(e).__name__}: {e}); "
                               f"pass --synsets FILE (one wnid per line, in ILSVRC2012_ID order)") from None
        return [ids[i] for i in range(1, len(ids) + 1) if i in ids]
    raise PrepareError(f"prepare: {gt_file} numbers the classes: pass --synsets FILE (one wnid per line in id "
                       f"order; 'sorted' for the sorted training folder names) or put the devkit's meta.mat "
                       f"beside it")


def read_ground_truth(gt_file, files, classes, synsets=None):
    """Labels of the flat validation files from a numbered list or a filename,class CSV."""
    gt_file = Path(gt_file)
    lines = [ln.strip() for ln in _read_text(gt_file, "ground-truth file").splitlines() if ln.strip()]
    lookup = {c: i for i, c in enumerate(classes)}
    if lines and not any("," in ln for ln in lines):  # the devkit's numbered list (a CSV line has a comma)
        for n, ln in enumerate(lines):
            if not re.fullmatch(r"\d+", ln):
                raise PrepareError(f"prepare: label file {gt_file} line {n + 1}: {ln!r} is not a class id "
                                   f"(expected the devkit's numbered list, or 'filename,class' CSV lines)")
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
        if name in by_name:  # the last would win: which row is right?
            raise PrepareError(f"prepare: label file {gt_file} lists {name!r} twice")
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
        if (src / "val").is_dir():  # its validation classes would become one training class "val"
            raise PrepareError(f"prepare: {src} has val/ but no train/ (expected {src}/train/<class>/<images>)")
        train, classes = scan_class_tree(src)
        return {"train": train, "val": []}, classes
    train, classes = scan_class_tree(src / "train")
    val = []
    vdir = src / "val"
    if vdir.is_dir():
        entries = [f for f in _listdir(vdir) if not f.name.startswith(".")]  # "._x.JPEG" is macOS metadata
        flat = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        folders = [d.name for d in entries if d.is_dir()]
        if flat and folders:  # one layout would be left out without a word
            raise PrepareError(f"prepare: {vdir} holds both images ({flat[0].name}, ...) and folders "
                               f"({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}): keep either "
                               f"the flat images or the class folders")
        if flat:
            gt = Path(val_labels) if val_labels else find_ground_truth(src)
            if gt is None:
                raise PrepareError(f"prepare: {vdir} holds images without class folders: give their labels with "
                                   f"--val-labels FILE (devkit ground truth or a filename,class CSV)")
            val = list(zip(flat, read_ground_truth(gt, flat, classes, synsets)))
        elif folders:
            val, _ = scan_class_tree(vdir, classes)
        else:
            raise PrepareError(f"prepare: validation folder {vdir} is empty")
    return {"train": train, "val": val}, classes


# ---- decoding ----

def load_image(path, size):
    """uint8 (size, size, 3): shorter side scaled to `size`, central square crop. Raises on bad files."""
    from PIL import Image, ImageOps

    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device: reading it may never end
        raise ValueError("not a regular file")
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
        with _files.atomic_file(dst / f"{name}.stats.npz") as f:
            np.savez(f, **stats.to_arrays())
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
                h.update(os.fsencode(_rel(path, src)) + f"\0{label}\n".encode())  # any bytes the name has
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
    # all settings before anything is written: the plan file would lock DST to a bad one
    _check_setting("--size", size, 8, MAX_SIZE)
    _check_setting("--shard-size", shard_size, 1)
    if workers is not None:
        _check_setting("--workers", workers, 1)
    size, shard_size, src, dst = int(size), int(shard_size), Path(src), Path(dst)  # a NumPy integer is no JSON
    # a worker holds a whole shard: past the machine's memory it would be killed, or numpy's
    # MemoryError would come after the plan was written
    shard_bytes, memory = size * size * 3 * shard_size, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if shard_bytes > memory // 2:
        raise PrepareError(f"prepare: a shard of {shard_size} images of {size}x{size} takes "
                           f"{shard_bytes / 2**30:.1f} GiB, more than half of this machine's memory "
                           f"({memory / 2**30:.1f} GiB): lower --shard-size")
    # a DST among the scanned folders is read as a class folder when the run is resumed
    for scanned in ([src / "train", src / "val"] if (src / "train").is_dir() else [src]):
        if dst.resolve().is_relative_to(scanned.resolve()):
            raise PrepareError(f"prepare: the output folder {dst} is inside {scanned}, which is searched for "
                               f"images: put it elsewhere")
    items, classes = scan_source(src, val_labels, synsets)
    if not items["train"] and not items["val"]:
        raise PrepareError(f"prepare: no images found under {src}")
    plan = {split: [items[split][i:i + shard_size] for i in range(0, len(items[split]), shard_size)]
            for split in ("train", "val")}
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"prepare: the output folder {dst} is not a folder")
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"prepare: cannot create the output folder {dst}: {e.strerror}") from None
    # one writer at a time: a second run of the same command waits, then finds the work done
    with shards.folder_lock(dst, f"prepare: waiting for another process preparing {dst}"):
        return _prepare_into(src, dst, items, classes, plan, size, workers, shard_size, progress, stop_after_shards)


def _check_setting(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or \
            (high is not None and value > high):
        raise PrepareError(f"prepare: {name} must be an integer " +
                           (f"from {low} to {high}" if high is not None else f"of at least {low}") + f", got {value!r}")


def _prepare_into(src, dst, items, classes, plan, size, workers, shard_size, progress, stop_after_shards):
    """prepare(), with DST's lock held."""
    digest = _plan_digest(plan, size, classes, src)
    plan_file = dst / PLAN
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text())
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not an object")
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise PrepareError(f"prepare: {plan_file} is damaged ({e}): empty {dst} (or use another folder) "
                               f"and prepare again") from None
        if old.get("digest") != digest:
            now = {"size": size, "shard_size": shard_size}
            differ = [f"--{k.replace('_', '-')} {old.get(k)} there, {v} now" for k, v in now.items() if old.get(k) != v]
            raise PrepareError(f"prepare: {dst} holds a preparation of other files or settings "
                               f"({'; '.join(differ) or 'same settings, other files, labels or classes'}; its "
                               f"source: {old.get('source')}): use another folder or empty it")
    else:
        _refuse_unplanned_dataset(dst)
        shards.atomic_write_json(plan_file, {"digest": digest, "source": str(src), "size": size,
                                             "shard_size": shard_size})
    (dst / shards.INDEX).unlink(missing_ok=True)
    # leftovers of an interrupted run (.NAME.tmpPID of a dead process): every .*.tmp* went, a
    # user's .env.tmpl too, and a folder so named stopped the run
    _files.remove_stale_temporaries(dst)

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
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_signals.worker_init)
            try:
                pending = {pool.submit(_prepare_shard, job) for job in jobs}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        split, i, n, skipped = f.result()
                        bar.update(len(plan[split][i]))
            except KeyboardInterrupt:  # or SIGTERM: the shards in progress are temporaries the rerun removes
                _stop_workers(pool)
                raise
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


def _stop_workers(pool):
    """Ends a ProcessPoolExecutor's workers now. Its shutdown waits for the tasks that are running,
    and a second Ctrl-C inside that wait left the workers waiting for work and the exit waiting for
    them, forever."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()


def finish(dst, plan, classes, size):
    """Combine the finished shards: labels, mean image, PCA, report, and index.json last."""
    splits, stats, report, per_class = {}, shards.PixelStats(size, size), [], []
    for split, jobs in plan.items():
        if not jobs:
            continue
        metas = [json.loads((dst / f"{split}-{i:05d}.json").read_text()) for i in range(len(jobs))]
        labels = np.array([lab for m in metas for lab in m["labels"]], np.int32)
        if split == "train":
            per_class = np.bincount(labels, minlength=len(classes))
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
    lines += ["\t".join(map(_report_field, row)) for row in report]
    shards.atomic_write_bytes(dst / REPORT, ("\n".join(lines) + "\n").encode())  # before the errors below name it
    if stats.count == 0 and ("val" not in splits or splits["val"]["count"] == 0):
        raise PrepareError(f"prepare: no image could be read (see {dst / REPORT})")
    empty = [c for c, n in zip(classes, per_class) if n == 0]
    if empty:  # refused as an empty class folder is: a class the network never sees
        raise PrepareError(f"prepare: no training image of class{'es' if len(empty) > 1 else ''} "
                           f"{', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''} could be read "
                           f"(see {dst / REPORT}): replace those files or remove the class folder, then prepare "
                           f"into an empty folder")
    shards.atomic_save_npy(dst / "mean.npy", stats.mean_image())
    eigval, eigvec = stats.pca()
    shards.write_index(dst, size, classes, splits, "mean.npy", eigval, eigvec, shards.PCA_NOTE,
                       extra={"source": "prepare", "skipped": len(report)})
    return dst


def _report_field(text):
    """One tab-separated field on one line: a tab or newline in a name would break the rows, and
    a name that is not UTF-8 (held as surrogates) could not be written; its bytes show as \\xNN."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@_signals.command("prepare", "; rerun the same command to resume")
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m convnet.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="source tree (ILSVRC-2012 layout or folder-per-class)")
    ap.add_argument("dst", help="output folder (created; rerun the same command to resume)")
    ap.add_argument("--size", type=int, default=256,
                    help=f"side of the stored square images, 8 to {MAX_SIZE} (default 256)")
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
    except OSError as e:  # a full disk, a read-only DST: the file is named, not a traceback
        print(f"error: prepare: {e}; rerun the same command to resume once that is mended", file=sys.stderr)
        return 2
    index = json.loads((dst / shards.INDEX).read_text())
    counts = ", ".join(f"{k} {v['count']}" for k, v in index["splits"].items())
    print(f"prepare: {len(index['classes'])} classes, {counts} images of {args.size}x{args.size} in "
          f"{time.time() - t0:.1f} s -> {dst}; {index['skipped']} files skipped (see {dst / REPORT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
