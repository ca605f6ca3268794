"""The paper's pictures for a trained net (matplotlib, Agg backend, PNG files):

- learning_curves.png: training and validation loss, training top-1 and validation top-1/top-5
  error per epoch, with the learning-rate cuts marked (the schedule of section 5).
- conv1_kernels.png: the learned conv1 kernels as colour tiles, one block per tower (Figure 3).
- predictions.png: validation images with the net's top-5 labels and probabilities, the true
  label's bar in red (Figure 4, left).
- neighbours.png: for a few validation images, the training images whose activations of the
  last hidden layer (fc7 after its ReLU) are nearest in Euclidean distance (Figure 4, right);
  searched in a subset of the training set for speed.

Written into the run folder at the end of training, or on request:
`python -m convnet.plots CHECKPOINT_OR_RUN [--out DIR] [--data DIR] [--train-subset N]`.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import _files, _signals
from ._checks import json_int, json_number

# Picture sizes in pixels (width, height): the figures are drawn at DPI with these sizes.
DPI = 100
CURVES_SIZE = (1000, 420)
KERNELS_SIZE = (1000, 520)
PREDICTIONS_SIZE = (900, 860)
NEIGHBOURS_SIZE = (1000, 700)
FEATURES = "relu7"  # the layer (or tower group) whose activations the neighbours are nearest in


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # a bare ModuleNotFoundError, from the end of a finished training run too
        raise ImportError("the pictures need matplotlib (pip install matplotlib); convnet.train draws none "
                          "with --plots no") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _figure(size):
    plt = _pyplot()
    return plt, plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)


def _save(plt, fig, path):
    # Through a temporary: a write cut short (a full disk, a signal) leaves the old picture, not half
    # a PNG. No bbox_inches="tight": the picture keeps exactly its documented size.
    try:
        with _files.atomic_file(path) as f:
            fig.savefig(f, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _metrics_problem(r):
    """Why a line of metrics.jsonl cannot be drawn, or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    if not json_int(r.get("epoch")):
        return f"epoch is {r.get('epoch')!r}"
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr_cut_to"):
        # validation fields are null without a validation split; lr_cut_to only at a cut
        optional = key.startswith("val_") or key == "lr_cut_to"
        if not (json_number(r.get(key)) or (optional and r.get(key) is None)):
            return f"{key} is {r.get(key)!r}"
    return None


def read_metrics(path):
    """The records of a run's metrics.jsonl that can be drawn ([] without the file). A line cut
    short by a crash, or damaged, is left out with a word on stderr (it was a traceback, on
    exactly the run a crash leaves)."""
    lines = Path(path).read_text(errors="replace").splitlines() if Path(path).is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            why = "not JSON (cut short?)"
        else:
            why = _metrics_problem(r)
        if why is None:
            records.append(r)
        else:
            print(f"convnet.plots: {path} line {number} left out of the learning curves: {why}", file=sys.stderr)
    return records


def learning_curves(records, path):
    """Training and validation loss, training top-1 and validation top-1/top-5 error per epoch;
    a dotted line after each epoch whose end cut the learning rate."""
    from matplotlib.ticker import MaxNLocator

    plt, fig = _figure(CURVES_SIZE)
    ax_loss, ax_err = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in records]

    def value(r, key):  # NaN (no point) for a run without a validation split, whose fields are null
        return math.nan if r.get(key) is None else r[key]

    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="training loss")
    ax_loss.plot(epochs, [value(r, "val_loss") for r in records], "s--", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_err.plot(epochs, [100 * (1 - r["train_top1"]) for r in records], "o-", label="training top-1")
    ax_err.plot(epochs, [100 * (1 - value(r, "val_top1")) for r in records], "s-", label="validation top-1")
    ax_err.plot(epochs, [100 * (1 - value(r, "val_top5")) for r in records], "^-", label="validation top-5")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    for ax in (ax_loss, ax_err):
        for r in records:
            if r.get("lr_cut_to") is not None:
                ax.axvline(r["epoch"] + 0.5, color="grey", linestyle=":", linewidth=1)
                ax.text(r["epoch"] + 0.5, 0.97, f" lr {r['lr_cut_to']:g}", rotation=90, va="top",
                        fontsize=7, color="grey", transform=ax.get_xaxis_transform())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("learning curves (dotted: learning rate divided)")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    return _save(plt, fig, path)


def kernel_tiles(weights, towers, cols=8, pad=1):
    """conv1 weights (K, 3, h, w) -> one RGB mosaic per tower, each kernel scaled on its own to
    [0, 1] around grey (0.5 is zero) so that its structure and colour show."""
    w = np.asarray(weights, dtype=np.float64)
    k, c, h, wd = w.shape
    scale = np.abs(w).reshape(k, -1).max(axis=1).reshape(k, 1, 1, 1)
    tiles = 0.5 + 0.5 * w / np.maximum(scale, 1e-12)
    if c != 3:  # not RGB (e.g. greyscale data): show the mean over channels
        tiles = np.repeat(tiles.mean(axis=1, keepdims=True), 3, axis=1)
    per = k // towers
    cols = min(cols, per)
    rows = -(-per // cols)
    mosaics = []
    for t in range(towers):
        m = np.ones((rows * (h + pad) + pad, cols * (wd + pad) + pad, 3))
        for i in range(per):
            r, q = divmod(i, cols)
            y, x = pad + r * (h + pad), pad + q * (wd + pad)
            m[y:y + h, x:x + wd] = tiles[t * per + i].transpose(1, 2, 0)
        mosaics.append(m)
    return mosaics


def conv1_kernels(net, path):
    """Figure 3: the conv1 kernels, one block per tower (tower t holds kernels t*K/T .. (t+1)*K/T).
    None (nothing drawn) for a net without a conv layer named conv1."""
    towers = int(net.config.get("towers", 1) or 1)
    devices = list(getattr(net, "devices", []))
    weights = net.state_dict().get("conv1.weight")
    if weights is None or np.ndim(weights) != 4 or len(weights) % towers:
        return None
    weights = np.asarray(weights)
    k, c, h, w = weights.shape
    mosaics = kernel_tiles(weights, towers)
    plt, fig = _figure(KERNELS_SIZE)
    axes = fig.subplots(1, towers, squeeze=False)[0]
    for t, (ax, m) in enumerate(zip(axes, mosaics)):
        ax.imshow(m, interpolation="nearest")
        where = f" ({devices[t]})" if t < len(devices) else ""
        ax.set_title(f"tower {t + 1}{where}: {k // towers} kernels")
        ax.axis("off")
    fig.suptitle(f"conv1 kernels (Figure 3): {k} of {h}x{w}x{c}")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.05)
    return _save(plt, fig, path)


class _Pick:
    """Some images of a split, chosen by index (a split-like object for data.Loader)."""

    def __init__(self, split, index):
        self._split = split
        self.images = np.stack([np.asarray(split.images[int(i)]) for i in np.sort(index)])
        self.labels = np.asarray(split.labels)[np.sort(index)]

    def __len__(self):
        return len(self.labels)

    def __getattr__(self, name):
        return getattr(self._split, name)


def _outputs(net, split, dataset, crop, layer=None, batch_size=100):
    """Softmax probabilities (layer None) or a layer's features for every image of split,
    centre crop, in order."""
    from convnet import data
    from convnet.evaluate import softmax
    from convnet.train import physical

    device = physical(net.devices[0])
    loader = data.Loader(split, batch_size, train=False, crop=crop, mean=dataset.mean, device=device)
    out = []
    for images, _ in loader:
        if layer is None:
            out.append(softmax(net.forward(images, train=False).numpy()))
        else:
            f = np.asarray(net.features(images, layer=layer))
            out.append(f.reshape(len(f), -1).astype(np.float64))
    return np.concatenate(out, axis=0)


def _spread(labels, count, seed=0):
    """`count` indices, one per class in turn, so that the pictures show different classes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked, i = [], 0
    while len(picked) < min(count, len(labels)):
        for idx in by_class:
            if i < len(idx) and len(picked) < count:
                picked.append(int(idx[i]))
        i += 1
    return np.sort(np.array(picked, dtype=np.int64))


def _name(classes, i):
    return str(classes[int(i)]) if classes is not None else str(int(i))


def predictions(net, dataset, crop, path, count=8):
    """Figure 4 (left): validation images, each above its top-5 labels and probabilities."""
    split = _Pick(dataset.val, _spread(dataset.val.labels, count))
    probs = _outputs(net, split, dataset, crop)
    plt, fig = _figure(PREDICTIONS_SIZE)
    cols = 4
    rows = -(-len(split) // cols)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[1.0, 0.75] * rows, hspace=0.25, wspace=0.7,
                            left=0.09, right=0.98, bottom=0.04, top=0.92)
    for j in range(len(split)):
        r, q = divmod(j, cols)
        ax = fig.add_subplot(grid[2 * r, q])
        ax.imshow(split.images[j], interpolation="nearest")
        ax.set_title(_name(dataset.classes, split.labels[j]), fontsize=9)
        ax.axis("off")
        top = np.argsort(-probs[j], kind="stable")[:5]
        bar = fig.add_subplot(grid[2 * r + 1, q])
        colours = ["tab:red" if t == split.labels[j] else "tab:blue" for t in top]
        bar.barh(range(len(top)), probs[j][top], color=colours)
        bar.set_yticks(range(len(top)))
        bar.set_yticklabels([_name(dataset.classes, t) for t in top], fontsize=8)
        bar.invert_yaxis()
        bar.set_xlim(0, 1)
        bar.tick_params(axis="x", labelsize=7)
    fig.suptitle("validation images and the net's top-5 (red: the true label)")
    return _save(plt, fig, path)


def nearest_rows(queries, pool, count):
    """For each row of queries, the indices of the `count` rows of pool nearest to it in Euclidean
    distance, nearest first (a tie: the lower index first)."""
    q, p = np.asarray(queries, np.float64), np.asarray(pool, np.float64)
    d = (q ** 2).sum(1)[:, None] - 2 * q @ p.T + (p ** 2).sum(1)[None, :]  # squared distances
    return np.argsort(d, axis=1, kind="stable")[:, :count]


def neighbours(net, dataset, crop, path, queries=5, shown=6, train_subset=1000, seed=0):
    """Figure 4 (right): for each query validation image, the training images (from a random
    subset of train_subset) with the nearest activations of the last hidden layer (fc7 after its
    ReLU, as the paper's "feature activations induced at the last, 4096-dimensional hidden
    layer"). None (nothing drawn) for a net without that layer."""
    if not any(l.name == FEATURES or l.group == FEATURES for l in net.layers):
        return None
    rng = np.random.default_rng(seed)
    n_train = len(dataset.train.labels)
    pool = _Pick(dataset.train, rng.choice(n_train, size=min(train_subset, n_train), replace=False))
    shown = min(shown, len(pool))  # a training set smaller than a row: an IndexError ended the run
    query = _Pick(dataset.val, _spread(dataset.val.labels, queries, seed=seed + 1))
    fq = _outputs(net, query, dataset, crop, layer=FEATURES)
    fp = _outputs(net, pool, dataset, crop, layer=FEATURES)
    nearest = nearest_rows(fq, fp, shown)
    plt, fig = _figure(NEIGHBOURS_SIZE)
    rows = len(query)
    axes = fig.subplots(rows, shown + 1, squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(query.images[i], interpolation="nearest")
        axes[i, 0].set_title("query: " + _name(dataset.classes, query.labels[i]), fontsize=8, color="tab:red")
        for j in range(shown):
            k = nearest[i, j]
            axes[i, 1 + j].imshow(pool.images[k], interpolation="nearest")
            axes[i, 1 + j].set_title(_name(dataset.classes, pool.labels[k]), fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(f"nearest training images in the last hidden layer (fc7 after ReLU; of {len(pool)} searched)")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.35, wspace=0.05)
    return _save(plt, fig, path)


def draw_all(out_dir, net, dataset=None, crop=None, metrics=None, train_subset=1000):
    """Every picture that the inputs allow, into out_dir; returns the paths written."""
    from convnet.evaluate import input_size

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    records = read_metrics(metrics or out / "metrics.jsonl")
    if records:
        written.append(learning_curves(records, out / "learning_curves.png"))
    written.append(conv1_kernels(net, out / "conv1_kernels.png"))
    if dataset is not None and dataset.val is not None:  # both pictures show validation images
        crop = crop or input_size(net)
        written.append(predictions(net, dataset, crop, out / "predictions.png"))
        written.append(neighbours(net, dataset, crop, out / "neighbours.png", train_subset=train_subset))
    return [w for w in written if w is not None]


def _out_problem(out):
    """Why pictures cannot be written into folder `out` (made if missing), or None."""
    if out == "":
        return "--out: the folder name is empty"
    p = Path(out)
    while not p.exists() and p != p.parent:  # the nearest folder that exists must be a folder
        p = p.parent
    if not p.is_dir():
        return f"--out {out}: {p} is not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"--out {out}: {p} is not writable"
    return None


@_signals.command("convnet.plots")
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m convnet.plots",
                                description="Draw the paper's pictures for a checkpoint or run folder.")
    p.add_argument("source", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--out", help="folder for the pictures (default: the run folder)")
    p.add_argument("--data", help="dataset folder (default: the one the net was trained on)")
    p.add_argument("--train-subset", type=int, default=1000,
                   help="training images searched for the neighbours (default 1000)")
    a = p.parse_args(argv)
    # before the net and data load: these were tracebacks after them (0 and -1 after three pictures)
    if a.train_subset < 1:
        p.error(f"--train-subset must be >= 1, got {a.train_subset}")
    if a.out is not None and (why := _out_problem(a.out)):
        p.error(why)
    from convnet.evaluate import EvaluateError, load_net, open_data_for, train_record
    from convnet.train import find_checkpoint

    try:
        _pyplot()
        net, meta, ckpt = load_net(a.source)
        record, why = train_record(meta)  # a damaged one was an AttributeError or TypeError here
        if why is not None:
            print(f"convnet.plots: the train record of {ckpt} is damaged ({why}): not used", file=sys.stderr)
    except (EvaluateError, ImportError) as e:
        print(f"convnet.plots: {e}", file=sys.stderr)
        sys.exit(2)
    # the data, checked against the net as for convnet.evaluate (another class count mislabelled the
    # predictions or was an IndexError); without it only the curves and kernels are drawn
    dataset = crop = None
    try:
        dataset, _, (crop,) = open_data_for([(net, meta, ckpt)], [(record, why)], a.data)
    except EvaluateError as e:
        if a.data is not None:
            print(f"convnet.plots: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"convnet.plots: no predictions or neighbours: {e}", file=sys.stderr)
    if dataset is not None and dataset.val is None:
        print("convnet.plots: no predictions or neighbours: the data has no validation split", file=sys.stderr)
    run_dir = find_checkpoint(a.source)[1]
    try:
        for path in draw_all(a.out or run_dir, net, dataset, crop, metrics=run_dir / "metrics.jsonl",
                             train_subset=a.train_subset):
            print(f"wrote {path}")
    except OSError as e:  # a full disk, a folder where a picture goes
        print(f"convnet.plots: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
