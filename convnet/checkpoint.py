"""Checkpoints: weights and momentum in a safetensors file, everything else in a JSON file.

    save("runs/x/ckpt.safetensors", net, opt, {"epoch": 3, "step": 1200, "rng": ...})
    net, opt_state, meta = load("runs/x/ckpt.safetensors")

The safetensors file (written here, no dependency): 8-byte little-endian header length, a
JSON header {name: {"dtype": "F32"|"I32"|"U8", "shape": [...], "data_offsets": [begin, end]},
"__metadata__": {...}}, then the raw little-endian bytes. Weights are stored under their
one-device names ("conv1.weight"), momentum under "momentum/conv1.weight", so a checkpoint
loads into any placement (two towers or one device). The JSON file next to it (same name,
suffix .json) holds the caller's metadata (epoch, step, RNG state...), the optimizer settings,
the net's config and step, and the SHA-256 of the safetensors file, so a mismatched pair or
a corrupt file is detected. The weights file's name ends in .safetensors: the metadata of
"run.epoch1" and "run.epoch2" was one run.json, and the second save cost the first. Each file is
written atomically (temporary file in the same folder, fsync, os.replace, fsync of the folder),
and the pair changes in three steps so that a save stopped anywhere leaves a checkpoint that
loads, the old one or the new: the new weights go to a side file (.NAME.pendingPID-N), the
metadata naming their SHA-256 and that file replaces the old metadata (the commit), then the
weights take their place; load() reads the side file when a save stopped between the last two.
(Written in place, the new weights and the old metadata disagreed until the second file was
written, and a checkpoint stopped there no longer loaded.) A save holds an exclusive lock on
.NAME.lock throughout: two saves to one path (threads or processes) interleaved their steps and
shared temporaries, and left weights and metadata from different saves. A process killed inside
a save leaves its temporary (.NAME.tmpPID-N) or side file; remove_stale_temporaries() deletes
those of dead processes (convnet-train does when it opens a run folder), and each save the side
files of the saves to its path before it.
"""
import glob
import hashlib
import json
import math
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np

from . import _files
from ._checks import integer

# Little-endian hosts only (x86-64, ARM64): the file's byte order is the machine's.
assert sys.byteorder == "little", "convnet.checkpoint assumes a little-endian machine"
_DTYPES = {"F32": np.dtype(np.float32), "I32": np.dtype(np.int32), "U8": np.dtype(np.uint8)}
_CODES = {np.dtype("float32"): "F32", np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}
_MAX_HEADER = 100 << 20
MOMENTUM_PREFIX = "momentum/"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or mismatched."""


def meta_path(path):
    """The metadata file of the checkpoint whose weights file is `path` (NAME.safetensors -> NAME.json)."""
    name = Path(path).name
    if not name.endswith(".safetensors") or name == ".safetensors":
        raise ValueError(f"checkpoint path {os.fspath(path)!r} must name a file ending in .safetensors "
                         "(its metadata goes beside it, with .json in place of .safetensors)")
    return Path(path).with_suffix(".json")


def _pending(path, writer=""):
    """Where save() keeps the new weights until their metadata is written (.NAME.pending: older saves)."""
    return path.with_name(f".{path.name}.pending{writer}")


def _named_by_metadata(pending, checkpoint):
    """Whether the checkpoint's metadata names this side file: its save stopped after the commit,
    and load() reads the weights from it."""
    try:
        return json.loads(meta_path(checkpoint).read_text())["convnet"]["pending_file"] == pending.name
    except (OSError, ValueError, KeyError, TypeError):
        return False


def remove_stale_temporaries(folder):
    """Delete what saves left in folder when their process was killed or their save failed: the
    temporaries (convnet._files) and side files (.NAME.pendingPID-N) of dead processes, one of
    them maybe a full copy of the weights and momentum; returns their paths. A side file its
    checkpoint's metadata names is kept: load() reads the weights from it."""
    removed = _files.remove_stale_temporaries(folder)
    for f in sorted(Path(folder).glob(".*.pending*")):
        m = re.fullmatch(r"\.(.+)\.pending(\d+)-\d+", f.name)
        if m and f.is_file() and not _files.alive(int(m.group(2))) and \
                not _named_by_metadata(f, f.with_name(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return sorted(removed)


def safetensors_bytes(tensors, metadata=None):
    """The safetensors encoding of {name: ndarray} as a list of byte chunks, and its SHA-256."""
    header = {}
    offset = 0
    arrays = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _CODES:
            raise TypeError(f"safetensors: {name} has dtype {a.dtype} (float32, int32 or uint8 only)")
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # data starts 8-byte aligned
    chunks = [struct.pack("<Q", len(h)), h] + [memoryview(a).cast("B") for a in arrays]
    sha = hashlib.sha256()
    for c in chunks:
        sha.update(c)
    return chunks, sha.hexdigest()


def write_safetensors(path, tensors, metadata=None):
    chunks, sha = safetensors_bytes(tensors, metadata)
    _files.atomic_write(path, chunks)
    return sha


def read_safetensors(path):
    """({name: ndarray}, metadata dict, sha256) of a safetensors file; CheckpointError if it is bad."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read: {e}") from None
    bad = lambda why: CheckpointError(f"checkpoint {path}: {why}")  # noqa: E731
    if len(blob) < 8:
        raise bad(f"truncated ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(len(blob) - 8, _MAX_HEADER):
        raise bad(f"header length {n} does not fit a {len(blob)}-byte file (truncated or not safetensors)")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"corrupt header: {e}") from None
    if not isinstance(header, dict):
        raise bad("corrupt header: not a JSON object")
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    end_max = 0
    for name, info in header.items():
        try:
            dt = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"corrupt entry for {name!r}: {info!r}") from None
        if any(s < 0 for s in shape) or not 0 <= begin <= end or end - begin != int(np.prod(shape)) * dt.itemsize:
            raise bad(f"corrupt entry for {name!r}: shape {shape} and offsets [{begin}, {end}] disagree")
        if end > len(data):
            raise bad(f"truncated: {name!r} ends at byte {end} of a {len(data)}-byte data section")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(shape).copy()
        end_max = max(end_max, end)
    if end_max != len(data):
        raise bad(f"{len(data) - end_max} unexpected bytes after the tensors")
    return tensors, metadata, hashlib.sha256(blob).hexdigest()


def _read_weights(path, want, mpath, side):
    """The tensors of a checkpoint's weights file, checked against the SHA-256 `want` from its
    metadata, or those of the side file a save() stopped before its last rename left, when that
    is the file the metadata names."""
    try:
        tensors, _, sha = read_safetensors(path)
    except CheckpointError as e:
        tensors, sha, error = None, None, e
    if want not in (None, sha) and side.is_file():
        try:
            pending, _, pending_sha = read_safetensors(side)
        except CheckpointError:
            pending_sha = None
        if pending_sha == want:
            return pending
    if tensors is None:
        raise error
    if want not in (None, sha):
        raise CheckpointError(f"checkpoint {path}: the weights file does not match its metadata {mpath} "
                              "(SHA-256 differs: corrupt, or one of the pair was replaced)")
    return tensors


def _pair_state(path, mpath):
    """(the metadata's text, the weights file's identity), each None when unreadable."""
    try:
        text = mpath.read_text()
    except OSError:
        text = None
    try:
        st = os.stat(path)
        weights = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        weights = None
    return text, weights


def _read_pair(path, mpath, text):
    """(the caller's record, the checkpoint's own record, the weights) from the metadata's text."""
    try:
        record = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: corrupt metadata {mpath}: {e}") from None
    info = record.pop("convnet", None) if isinstance(record, dict) else None
    if not isinstance(info, dict) or "config" not in info:
        raise CheckpointError(f"checkpoint {path}: {mpath} is not convnet checkpoint metadata")
    side = info.get("pending_file")
    if not (isinstance(side, str) and re.fullmatch(re.escape(_pending(path).name) + r"\d+-\d+", side)):
        side = _pending(path).name  # an older save's name (or damaged metadata)
    return record, info, _read_weights(path, info.get("weights_sha256"), mpath, path.with_name(side))


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def _nonfinite_at(x, within=()):
    """Where in x the first NaN or infinity is, as a subscript ("['a'][2]"); None if nowhere
    (within: the ids of the containers above, so that a circular reference ends)."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, (float, np.floating)):
        return None if math.isfinite(x) else ""
    if not isinstance(x, (dict, list, tuple)) or id(x) in within:
        return None
    for k, v in (x.items() if isinstance(x, dict) else enumerate(x)):
        inner = _nonfinite_at(v, within + (id(x),))
        if inner is not None:
            return f"[{k!r}]{inner}"
    return None


def save(path, net, opt=None, meta=None):
    """Write the net's weights and the optimizer's momentum (path, NAME.safetensors) and the
    metadata (NAME.json): meta (epoch, step, RNG state, ...), the net's config and step, and
    the optimizer's settings."""
    mpath = meta_path(path)
    path = Path(path)
    # Refuse what would fail halfway: a folder in the way was found only after the commit.
    if not path.parent.exists():
        raise FileNotFoundError(f"checkpoint {path}: the folder {path.parent} does not exist")
    if not path.parent.is_dir():
        raise NotADirectoryError(f"checkpoint {path}: {path.parent} is not a folder")
    for p in (path, mpath):
        if p.is_dir():
            raise IsADirectoryError(f"checkpoint {path}: {p} is a folder")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"checkpoint.save: meta must be a dict, got {type(meta).__name__}")
    if meta and "convnet" in meta:
        raise ValueError("checkpoint.save: meta must not have the key 'convnet' (the checkpoint's own record)")
    tensors = dict(net.state_dict())
    if opt is not None:
        for key, a in net.momentum_dict().items():
            tensors[MOMENTUM_PREFIX + key] = a
    chunks, sha = safetensors_bytes(tensors, {"format": "convnet"})
    pending = _pending(path, _files.writer())
    record = dict(meta or {})
    record["convnet"] = {"config": net.config, "net_step": net.step, "weights_file": path.name,
                         "weights_sha256": sha, "pending_file": pending.name,
                         "optimizer": None if opt is None else {k: v for k, v in opt.state_dict().items()
                                                                if k != "momentum"}}
    try:  # before anything is written
        # allow_nan=False: Python wrote a NaN as the bare word NaN, which is not JSON (other
        # readers of the metadata refuse the file)
        text = json.dumps(record, indent=1, default=_jsonable, allow_nan=False)
    except ValueError as e:
        at = _nonfinite_at(record)
        if at is None:  # a circular reference
            raise ValueError(f"checkpoint.save: meta: {e}") from None
        raise ValueError(f"checkpoint.save: meta{at} is not finite: JSON has no NaN or infinity (store "
                         f"it as None or a string)") from None
    except TypeError as e:
        raise TypeError(f"checkpoint.save: meta: {e}") from None
    # one save to a path at a time: two at once interleaved their steps and left weights and
    # metadata of different saves
    with _files.locked(path.with_name(f".{path.name}.lock")):
        _files.atomic_write(pending, chunks)
        _files.atomic_write(mpath, [text.encode()])  # the commit
        os.replace(pending, path)
        _files.fsync_folder(path.parent)
        # The metadata now names the weights in place: no side file of a save to this path before
        # this one (stopped, or failed while its process lives on) can be needed any more.
        side = re.escape(_pending(path).name) + r"(\d+-\d+)?"
        for f in path.parent.glob(glob.escape(_pending(path).name) + "*"):
            if re.fullmatch(side, f.name):
                f.unlink(missing_ok=True)
    return path


def load(path, net=None, opt=None, devices=None):
    """(net, opt_state, meta) from a checkpoint. Without `net` the net is rebuilt from the saved
    config (on `devices`); with one, its shapes must match (ValueError naming the key otherwise).
    The momentum is loaded into the net's Params (and opt's settings into opt when given), so
    training continues exactly; opt_state is {"momentum": {...}, "lr": ..., ...} or None. meta is
    the dict given to save(), unchanged; the net's config and step are net.config and net.step."""
    mpath = meta_path(path)
    path = Path(path)
    # The caller's devices, checked here: build()'s errors below are reported as damaged metadata.
    if devices is not None:
        from .graph import physical_device

        names = [devices] if isinstance(devices, str) else devices
        if not isinstance(names, (list, tuple)) or not all(isinstance(d, str) for d in names):
            raise TypeError(f"checkpoint.load: devices must be a device name or a list of them, got {devices!r}")
        for d in names:
            physical_device(d)  # ValueError or RuntimeError naming the device
    # A save may run while this reads (load takes no lock: it may read where it cannot write): the
    # weights or the side file can change between the reads. A failed read of the pair is tried
    # again while the files keep changing; a pair that fails unchanged is damaged.
    while True:
        seen = _pair_state(path, mpath)
        if seen[0] is None:
            try:
                mpath.read_text()
            except OSError as e:
                raise CheckpointError(f"checkpoint {path}: cannot read its metadata {mpath}: {e}") from None
            continue  # (it appeared meanwhile)
        try:
            record, info, tensors = _read_pair(path, mpath, seen[0])
            break
        except CheckpointError:
            if _pair_state(path, mpath) == seen:
                raise
    towers = info["config"].get("towers") if isinstance(info["config"], dict) else None
    if net is None and devices is not None and type(towers) is int and len(names) < towers:
        raise ValueError(f"checkpoint {path}: the net has {towers} towers but {len(names)} devices were "
                         f"given: {list(names)}")
    weights = {k: v for k, v in tensors.items() if not k.startswith(MOMENTUM_PREFIX)}
    momentum = {k[len(MOMENTUM_PREFIX):]: v for k, v in tensors.items() if k.startswith(MOMENTUM_PREFIX)}
    # The metadata is not covered by the weights' hash: an edited or damaged value in it must say
    # which checkpoint it came from (it surfaced as "'int' object is not iterable" and the like).
    try:
        if net is None:
            from . import models

            net = models.build(info["config"], devices=devices)
        net_step = integer(info.get("net_step", 0), "net_step", 0, error=ValueError)
        optimizer = info.get("optimizer") or {}
        if not isinstance(optimizer, dict):
            raise ValueError(f"optimizer must be a JSON object, got {optimizer!r}")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its metadata {mpath} is damaged: {e}") from None
    net.check_state(weights, f"checkpoint {path}")
    net.load_state_dict(weights)
    net.step = net_step
    opt_state = None
    if momentum:
        net.check_state(momentum, f"checkpoint {path} (momentum)")
        net.load_momentum_dict(momentum)
        opt_state = dict(optimizer)
        opt_state["momentum"] = momentum
        if opt is not None:
            if opt.net is not net:
                raise ValueError("checkpoint.load: opt belongs to another net")
            try:
                opt.load_state_dict(opt_state)
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"checkpoint {path}: its optimizer state in {mpath}: {e}") from None
    # the caller's metadata exactly as saved: the checkpoint's own values are net.config, net.step
    # and opt_state["lr"] (merged in here, they hid a caller's keys of those names)
    return net, opt_state, record
