"""Top-1 and top-5 error of trained nets on the validation set, like the paper's results table:
`python -m convnet.evaluate CHECKPOINT [CHECKPOINT ...]` (console script convnet-evaluate).

Each CHECKPOINT is a checkpoint path or a run folder (its last checkpoint). `--views 1` scores
the centre crop, `--views 10` the paper's ten patches (four corners and the centre, and their
reflections) with the softmax averaged over the ten. With several checkpoints it also scores
the ensemble: the average of the nets' softmax outputs (as the paper's "average of 5 CNNs").
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import _signals
from ._checks import output_file_problem


class EvaluateError(Exception):
    pass


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def errors(probs, labels):
    """(top-1 error, top-5 error) of class probabilities (N, C) against labels (N,)."""
    labels = np.asarray(labels)
    k = min(5, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top1 = np.mean(top[:, 0] != labels)
    top5 = np.mean(~(top == labels[:, None]).any(axis=1))
    return float(top1), float(top5)


def load_net(path, devices=None):
    """(net, meta, checkpoint path) from a checkpoint path or a run folder."""
    from convnet import checkpoint
    from convnet.train import TrainingError, checkpoint_towers, find_checkpoint, resolve_devices

    ckpt, _ = find_checkpoint(path)
    try:
        dev = resolve_devices(devices, checkpoint_towers(ckpt)) if devices is not None else None
        net, _, meta = checkpoint.load(str(ckpt), devices=dev)
    except TrainingError as e:
        raise EvaluateError(str(e)) from None
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise EvaluateError(f"cannot load a checkpoint from {path}: {e}") from None
    # a net saved after it diverged: its NaN outputs were scored as class 0, without a word
    bad = [name for name, w in net.state_dict().items() if not np.isfinite(w).all()]
    if bad:
        raise EvaluateError(f"{ckpt}: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} "
                            f"hold{'s' if len(bad) == 1 else ''} NaN or infinite weights: nothing to score or draw")
    return net, meta, ckpt


def train_record(meta):
    """(the checkpoint's 'train' record or None, why it is damaged or None). The record is not
    covered by the weights' hash: a damaged one came out as AttributeErrors and TypeErrors."""
    from convnet.train import check_train_record

    record = meta.get("train")
    why = None if record is None else check_train_record(record)
    return (None if why else record), why


def predict(net, images_u8, mean, crop, views, batch_size=128, device=None):
    """Softmax probabilities (N, C) of the net on uint8 NHWC images, averaged over the views
    (1: centre crop, 10: the paper's ten patches)."""
    from convnet import data
    from convnet.train import physical

    mode = {1: "center", 10: "ten"}[views]
    device = device or physical(net.devices[0])
    out = []
    for start in range(0, len(images_u8), batch_size):
        chunk = np.ascontiguousarray(images_u8[start:start + batch_size])
        # (views * n, 3, crop, crop): for image b, rows views*b .. views*b + views - 1
        batch, _ = data.view_batch(chunk, crop, mode=mode, mean=mean, device=device)
        p = softmax(net.forward(batch, train=False).numpy())
        out.append(p.reshape(len(chunk), views, -1).mean(axis=1))
    return np.concatenate(out, axis=0)


def input_size(net, record=None):
    """The crop the net takes: its config's input_size, else the run's --crop, else its input
    layer's (square) size; EvaluateError if none says (a net built from a list of layers)."""
    size = net.config.get("input_size") or (record or {}).get("args", {}).get("crop")
    if size is None:
        shapes = [tuple(l.shape) for l in net.layers if l.type == "input"]
        if len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][1] == shapes[0][2]:
            size = shapes[0][1]
    if size is None:  # was int(None): a TypeError
        raise EvaluateError("the net's input size is unknown (no input_size in its config, no square input layer)")
    return int(size)


def open_data_for(nets, records, data_path=None):
    """(dataset, its folder, each net's crop): the data at data_path (default: the one the first net
    was trained on), checked against every net (classes, crop size) and the nets against each
    other (trained on the same data). EvaluateError says what does not fit. nets: (net, meta,
    checkpoint) as from load_net; records: (record, why) as from train_record."""
    from convnet import checkpoint
    from convnet.train import TrainingError, open_data

    given = data_path is not None
    if not given:
        (record, why), ckpt = records[0], nets[0][2]
        if why is not None:
            raise EvaluateError(f"the train record in {checkpoint.meta_path(ckpt)} is damaged ({why}): "
                                f"which data the net was trained on is unknown: pass --data")
        data_path = record and record["args"]["data"]
        if data_path is None:
            raise EvaluateError("the checkpoint does not say which data it was trained on: pass --data")
    # The nets' class indices must mean the same classes: only a net's dataset says which
    prints = {}
    for (_, _, ckpt), (record, _) in zip(nets, records):
        if record is not None and isinstance(record.get("data_fingerprint"), str):
            prints.setdefault(record["data_fingerprint"], ckpt)
    if len(prints) > 1:
        a, b = list(prints.values())[:2]
        raise EvaluateError(f"{a} and {b} were trained on different datasets (their classes, labels or images "
                            f"differ): the average of their outputs may mix up classes; score them one at a time")
    where = {"data": data_path}
    try:
        ds = open_data(where)  # which writes the folder's absolute path ("builtin" -> the built-in one's)
    except TrainingError as e:
        if given:
            raise EvaluateError(str(e)) from None
        # no --data was passed: the folder is the one the checkpoint names
        raise EvaluateError(f"the data {nets[0][2]} was trained on: {str(e).removeprefix('--data: ')}; "
                            f"pass --data with its folder") from None
    data_path = where["data"]
    num_classes = len(ds.classes)
    crops = []
    for (net, _, ckpt), (record, _) in zip(nets, records):
        outputs = math.prod(net.output_layer.shape)  # the logits' width (a layer net has no num_classes)
        if outputs != num_classes:
            raise EvaluateError(f"{ckpt}: the net has {outputs} classes, the data at {data_path} {num_classes}: "
                                f"a checkpoint of another model?")
        crops.append(input_size(net, record))
        if crops[-1] > ds.image_size:
            raise EvaluateError(f"{ckpt}: the net takes {crops[-1]}x{crops[-1]} crops, larger than the "
                                f"{ds.image_size}x{ds.image_size} images of {data_path}")
    return ds, data_path, crops


def evaluate(checkpoints, data_path=None, views=(1,), batch_size=128, devices=None, limit=None):
    """Scores every checkpoint and, for several, their ensemble. Returns a list of settings, one
    per view count: {"views", "rows": [{"name", "top1", "top5", "probs"}], "labels"}."""
    nets = [load_net(c, devices) for c in checkpoints]
    records = [train_record(meta) for _, meta, _ in nets]
    ds, data_path, crops = open_data_for(nets, records, data_path)
    if ds.val is None:
        raise EvaluateError(f"the data at {data_path} has no validation split to score the nets on "
                            f"(pass --data with one)")
    images, labels = ds.val.images, np.asarray(ds.val.labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    settings = []
    for v in views:
        rows = []
        for (net, meta, ckpt), crop in zip(nets, crops):
            probs = predict(net, images, ds.mean, crop, v, batch_size)
            rows.append(dict(name=_short(ckpt), probs=probs, **dict(zip(("top1", "top5"), errors(probs, labels)))))
        if len(nets) > 1:
            probs = np.mean([r["probs"] for r in rows], axis=0)
            rows.append(dict(name=f"average of {len(nets)} CNNs", probs=probs,
                             **dict(zip(("top1", "top5"), errors(probs, labels)))))
        settings.append(dict(views=v, rows=rows, labels=labels, data=str(data_path)))
    return settings


def _run_files(path):
    """The files of the checkpoint at path (a run folder or checkpoint) and of its run folder."""
    from convnet.train import checkpoint_path, find_checkpoint

    ckpt, run = find_checkpoint(path)
    return [ckpt, ckpt.with_suffix(".json"), run / "args.json", run / "metrics.jsonl"] + [
        checkpoint_path(run, which).with_suffix(suffix) for which in ("last", "best")
        for suffix in (".safetensors", ".json")]


def _same_file(a, b):
    a, b = Path(a), Path(b)
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _short(path):
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def format_table(setting):
    what = "centre crop" if setting["views"] == 1 else f"{setting['views']} patches, softmax averaged"
    n = len(setting["labels"])
    lines = [f"validation set of {setting['data']} ({n} images), {what}", "",
             "| model | top-1 error | top-5 error |", "|---|---|---|"]
    for r in setting["rows"]:
        lines.append(f"| {r['name']} | {100 * r['top1']:.2f}% | {100 * r['top5']:.2f}% |")
    return "\n".join(lines)


@_signals.command("convnet-evaluate")
def main(argv=None):
    p = argparse.ArgumentParser(prog="convnet-evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint path or run folder")
    p.add_argument("--data", help="dataset folder, or builtin (default: the one the first net was trained on)")
    p.add_argument("--views", default="1", help="1 (centre crop), 10 (the paper's ten patches) or 1,10")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--devices", help="where to run the nets: one device or one per tower (default: cuda:0,cuda:1 "
                                        "when a GPU is visible, else cpu)")
    p.add_argument("--limit", type=int, help="score only the first N validation images")
    p.add_argument("--json", help="also write the errors to this JSON file")
    a = p.parse_args(argv)
    try:
        views = tuple(int(v) for v in a.views.split(","))
    except ValueError:
        views = ()
    if not views or any(v not in (1, 10) for v in views) or len(set(views)) < len(views):  # 10,10: two tables
        p.error(f"--views must be 1, 10 or 1,10, got {a.views!r}")
    # 0 was a traceback from range() or np.concatenate; --limit -30 scored all but the last 30 images
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.limit is not None and a.limit < 1:
        p.error(f"--limit must be >= 1, got {a.limit}")
    # before the nets run: the error used to come as a traceback after the table
    if why := output_file_problem(a.json):
        p.error(why)
    # --json RUN/checkpoint-last.json replaced the checkpoint's metadata: it no longer loaded
    for f in (f for c in a.checkpoints for f in _run_files(c)) if a.json else ():
        if _same_file(a.json, f):
            p.error(f"--json {a.json}: the errors would overwrite {f}, a file of a checkpoint or run being "
                    f"evaluated: choose another file")
    try:
        settings = evaluate(a.checkpoints, a.data, views, a.batch_size, a.devices, a.limit)
    except EvaluateError as e:
        print(f"convnet-evaluate: {e}", file=sys.stderr)
        sys.exit(2)
    for s in settings:
        print(format_table(s))
        print()
    if a.json:
        try:
            Path(a.json).write_text(json.dumps(
                [dict(views=s["views"], rows=[{k: r[k] for k in ("name", "top1", "top5")} for r in s["rows"]])
                 for s in settings], indent=2) + "\n")
        except OSError as e:  # no permission, disk full
            print(f"convnet-evaluate: --json: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
