"""Train AlexNet the way the paper did: `python -m convnet.train` (console script convnet-train).

With no arguments it trains a scaled-down two-tower AlexNet on the built-in synthetic dataset
(generated on first use) so that a laptop CPU finishes in minutes. `--model alexnet --data DIR`
trains the paper's network with the paper's recipe; every number is a flag whose default is the
paper's value (see PRESETS).

A run folder holds: args.json, metrics.jsonl (one JSON object per epoch), checkpoint-last.*
(every epoch and on Ctrl-C), checkpoint-best.* (lowest validation top-1 error; none for data
without a validation split) and the pictures of convnet.plots. `--resume RUN` continues exactly
where RUN stopped: the data order depends only on (seed, epoch, batch index) and dropout only on
(seed, step), so a resumed run computes the same weights as one that never stopped.
"""
import argparse
import hashlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import _signals
from ._checks import json_int, json_number

# Each model's defaults; an explicit flag overrides. "alexnet" is the paper (section 5 and 4);
# "small" is the scaled-down net that the no-argument run trains on the built-in dataset,
# tuned to pass 90% validation top-1 within minutes on two CPU cores.
PRESETS = {
    "alexnet": dict(
        batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=90, schedule="plateau",
        lr_factor=0.1, patience=3, max_cuts=3, milestones=None, input_size=224, crop=224,
        lighting=0.1, flip=True, dropout=0.5, towers=2, width=1.0, weight_std=0.01, widths=None,
        conv1=None,
    ),
    "small": dict(
        batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=15, schedule="step",
        lr_factor=0.1, patience=2, max_cuts=3, milestones="12", input_size=56, crop=56,
        lighting=0.1, flip=True, dropout=0.0, towers=2, width=1.0, weight_std=0.03,
        widths="32,64,96,96,64,256,256", conv1="5,2,2",
    ),
}

# Flags that may differ on --resume without changing what the run computes so far.
RESUMABLE_OVERRIDES = {"epochs", "devices", "limit_val", "progress", "plots", "check_every"}

EXIT_NONFINITE = 3


class TrainingError(Exception):
    """A failure with a message meant for the user; main() prints it and exits non-zero."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- arguments

def _bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes/no, got {s!r}")


def build_parser():
    p = argparse.ArgumentParser(
        prog="convnet-train",
        description="Train AlexNet (Krizhevsky, Sutskever & Hinton 2012). Without arguments: a "
                    "small two-tower AlexNet on the built-in synthetic dataset.")
    # Every default is None: the model's preset fills it in, so an explicit flag can be told apart.
    a = p.add_argument
    a("--model", choices=sorted(PRESETS), help="alexnet: the paper's net; small (default): scaled down")
    a("--data", help="prepared ImageNet folder (convnet-prepare), built-in dataset folder or "
                     "cifar-10-batches-py; default: the built-in dataset (generated on first use)")
    a("--run-dir", help="folder for checkpoints, metrics and pictures (default runs/<model>-<time>)")
    a("--resume", metavar="RUN", help="continue the run in this folder (or from this checkpoint)")
    a("--devices", help="where the towers go: 'cuda:0,cuda:1' (one tower each), 'cuda:0' or 'cpu' "
                        "(both towers on one device); default: cuda:0,cuda:1 when a GPU exists, else cpu")
    a("--towers", type=int, help="number of towers (paper: 2)")
    a("--epochs", type=int, help="passes over the training set (paper: about 90)")
    a("--batch-size", type=int, help="paper: 128")
    a("--lr", type=float, help="initial learning rate (paper: 0.01)")
    a("--momentum", type=float, help="paper: 0.9")
    a("--weight-decay", type=float, help="paper: 0.0005")
    a("--schedule", choices=["plateau", "step"],
      help="plateau (paper): divide lr by 1/--lr-factor when validation error stops improving; "
           "step: at --milestones")
    a("--lr-factor", type=float, help="multiplier at each cut (paper: 0.1)")
    a("--patience", type=int, help="plateau: epochs without improvement before a cut")
    a("--max-cuts", type=int, help="plateau: at most this many cuts (paper: 3)")
    a("--milestones", help="step: comma-separated epochs after which lr is cut, e.g. 30,60,80")
    a("--input-size", type=int, help="the net's input side: sets --crop when that is not given "
                                     "(paper: 224, cut from images stored at 256)")
    a("--crop", type=int, help="side of the random training crop and the validation centre crop "
                               "(paper: 224)")
    a("--width", type=float, help="alexnet: multiplier on every layer's kernel count, conv5 and the fc "
                                  "layers included (paper: 1.0; its one-GPU net, which halves conv1-4 "
                                  "only, is models.alexnet(half=True))")
    a("--widths", help="small: comma-separated sizes conv1..conv5,fc6,fc7 (both towers together)")
    a("--conv1", help="small: conv1 kernel,stride,padding (e.g. 5,2,2)")
    a("--weight-std", type=float, help="std of the Gaussian initial weights (paper: 0.01)")
    a("--extra-conv", action="store_true", default=None, help="alexnet: a sixth conv layer (paper's variant)")
    a("--dropout", type=float, help="dropout probability on fc6 and fc7 (paper: 0.5)")
    a("--lighting", type=float, help="std of the PCA colour augmentation (paper: 0.1); 0 turns it off")
    a("--flip", type=_bool, help="random horizontal reflections (paper: yes)")
    a("--seed", type=int, help="seed for initialisation, data order, augmentation and dropout")
    a("--limit-train", type=int, help="use only the first N training images (smoke runs)")
    a("--limit-val", type=int, help="use only the first N validation images (smoke runs)")
    a("--num-train", type=int, help="built-in dataset: training images to generate (default 10000)")
    a("--num-val", type=int, help="built-in dataset: validation images to generate (default 2000)")
    a("--image-size", type=int, help="built-in dataset: side of the generated images (default 64)")
    a("--check-every", type=int, help="check every weight for NaN/inf after every N-th update "
                                      "(default 1; 0: only the loss is checked)")
    a("--progress", type=_bool, help="show a progress bar per epoch (default yes)")
    a("--plots", type=_bool, help="draw the paper's pictures into the run folder at the end (default yes)")
    return p


def resolve_args(ns):
    """Fill unset flags from the model's preset and general defaults; returns a plain dict."""
    explicit = {k for k, v in vars(ns).items() if v is not None}
    args = dict(vars(ns))
    model = args["model"] or "small"
    args["model"] = model
    for k, v in PRESETS[model].items():
        if args.get(k) is None:
            args[k] = v
    if "crop" not in explicit and "input_size" in explicit:
        args["crop"] = args["input_size"]
    if {"crop", "input_size"} <= explicit and args["crop"] != args["input_size"]:
        raise TrainingError(f"--input-size {args['input_size']} differs from --crop {args['crop']}: the net "
                            f"takes the crop (give one of them)")
    args["input_size"] = args["crop"]  # what the net is built for (args.json said 56 for a crop of 32)
    if not args["resume"]:  # a resume's flags are compared with the run's own
        check_flags_apply(args, explicit)
    defaults = dict(seed=0, extra_conv=False, progress=True, plots=True, check_every=1, num_train=10000,
                    num_val=2000, image_size=64)
    for k, v in defaults.items():
        if args.get(k) is None:
            args[k] = v
    return args, explicit


def check_args(args):
    """The numbers of the recipe, before anything is written: bad ones failed late, as a traceback
    (--batch-size 0, --lr nan, --milestones a), or not at all (--epochs -1 trained nothing and
    --limit-train -5 meant every image but the last 5; --lighting nan turned the lighting off)."""
    def need(ok, key, what):
        if not ok:
            raise TrainingError(f"--{key.replace('_', '-')} must be {what}, got {args[key]}")

    for key in ("batch_size", "epochs", "crop", "input_size", "limit_train", "limit_val"):
        if args[key] is not None:
            need(args[key] >= 1, key, ">= 1")
    # finite as float32s, the kernels' type: 1e39 passed math.isfinite, then failed as a traceback
    # (--lr), or made the first batch inf (--lighting) or the initial weights (--weight-std)
    for key in ("lr", "momentum", "weight_decay", "lighting", "weight_std"):
        need(_float32(args[key]) and args[key] >= 0, key, "finite (as a float32) and >= 0")
    need(args["momentum"] < 1, "momentum", "below 1 (at 1 and above the updates grow without bound)")
    need(_float32(args["lr_factor"]) and 0 < args["lr_factor"] and (args["lr_factor"] < 1 or
         args["schedule"] == "step"), "lr_factor", "in (0, 1) (above 0 with --schedule step)")
    for key in ("check_every", "patience", "max_cuts"):
        need(args[key] >= 0, key, ">= 0")
    milestones = _int_list(args, "milestones")
    # the last rate of the step schedule, finite too: --lr-factor 1e300 stopped the run at its first cut
    need(_float32(args["lr"] * args["lr_factor"] ** len(milestones or [])), "lr_factor",
         f"small enough that --lr times it at each of the {len(milestones or [])} milestones stays finite")
    if args["model"] == "small":  # (alexnet leaves them None)
        _int_list(args, "widths")
        _int_list(args, "conv1")
    if args["data"] in (None, "builtin"):  # before the data is generated, not after
        need(args["crop"] <= args["image_size"], "crop", f"at most the built-in images' --image-size "
                                                         f"{args['image_size']}")
        if args["schedule"] == "plateau" and args["num_val"] == 0:
            raise TrainingError("--num-val 0 leaves no validation split, and the plateau schedule needs "
                                "validation errors: use --schedule step --milestones EPOCHS")


def _float32(v):
    return abs(v) <= 3.4028234663852886e38  # False for NaN


# The list flags: (what they hold, how many, their least value).
_INT_LISTS = {"milestones": ("comma-separated epochs >= 1, e.g. 30,60,80", None, 1),
              "widths": ("7 comma-separated sizes (conv1..conv5, fc6, fc7)", 7, 1),
              "conv1": ("kernel,stride,padding (e.g. 5,2,2)", 3, 0)}


def _int_list(args, key):
    """The comma-separated integers of a list flag (None when unset), or a TrainingError naming it:
    "8,,16" and "8.0" failed later as "invalid literal for int()", naming no flag; a milestone of
    0 or -5 meant 1."""
    what, count, minimum = _INT_LISTS[key]
    if args[key] is None:
        return None
    try:
        values = [int(v) for v in str(args[key]).split(",")]
    except ValueError:
        values = None
    if values is None or (count is not None and len(values) != count) or min(values) < minimum:
        raise TrainingError(f"--{key.replace('_', '-')} must be {what}, got {args[key]!r}")
    return values


# Flags that apply only to one model, schedule or data: given otherwise they were accepted, recorded
# in args.json, and ignored (--width with the small model, --milestones with the plateau schedule).
_APPLIES = {"widths": ("model", "small"), "conv1": ("model", "small"), "width": ("model", "alexnet"),
            "extra_conv": ("model", "alexnet"), "milestones": ("schedule", "step"),
            "patience": ("schedule", "plateau"), "max_cuts": ("schedule", "plateau"),
            "num_train": ("data", "builtin"), "num_val": ("data", "builtin"), "image_size": ("data", "builtin")}


def check_flags_apply(args, explicit):
    """Refuse a flag given for a model, schedule or data it does not apply to."""
    for key, (setting, value) in _APPLIES.items():
        have = "builtin" if setting == "data" and args["data"] in (None, "builtin") else args[setting]
        if key in explicit and have != value:
            where = "the built-in dataset" if setting == "data" else f"--{setting} {value}"
            raise TrainingError(f"--{key.replace('_', '-')} applies only to {where}, not to "
                                f"--{setting} {args[setting]}")


def check_train_record(state):
    """The 'train' record of a checkpoint's metadata, on --resume: every value one that training
    writes (the record is not covered by the weights' hash). A hand-edited or damaged one came out
    as KeyErrors and TypeErrors from inside the loop, or trained on (an epoch of -5 ran six more
    epochs over the run's checkpoint). Returns the reason it is refused, or None."""
    if not isinstance(state, dict):
        return f"it is {state!r}, not a JSON object"
    if not isinstance(state.get("args"), dict):
        return f"'args' is {state.get('args')!r}, not a JSON object"
    args = state["args"]
    parser = build_parser()
    # the values a new run of this model leaves None (--data, --milestones, ...) may be None
    fresh, _ = resolve_args(parser.parse_args(
        ["--model", args["model"]] if isinstance(args.get("model"), str) and args["model"] in PRESETS else []))
    for action in parser._actions:
        key = action.dest
        if key == "help":
            continue
        if key not in args:
            return f"args has no {key!r}"
        v = args[key]
        if v is None and fresh[key] is None:
            continue
        if action.type is int:
            ok = json_int(v)
        elif action.type is float:
            ok = json_number(v, finite=True)
        elif action.type is _bool or action.const is True:
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if ok and action.choices is not None:
            ok = v in action.choices
        if not ok:
            return f"args {key!r} is {v!r}, which --{key.replace('_', '-')} cannot give"
    for key in ("epoch", "batch", "step", "lr", "cuts", "best_val_error", "epoch_stats", "scheduler", "record"):
        if key not in state:
            return f"it has no {key!r}"
    for key in ("epoch", "batch", "step"):
        if not json_int(state[key], 0):
            return f"{key!r} is {state[key]!r}, not an integer >= 0"
    if not (json_number(state["lr"]) and _float32(state["lr"]) and state["lr"] >= 0):
        return f"'lr' is {state['lr']!r}, not a number >= 0 finite as a float32"
    if not (isinstance(state["cuts"], list) and all(json_int(c) for c in state["cuts"])):
        return f"'cuts' is {state['cuts']!r}, not a list of epochs"
    if state["best_val_error"] is not None and not json_number(state["best_val_error"], finite=True):
        return f"'best_val_error' is {state['best_val_error']!r}, not a number"
    stats = state["epoch_stats"]
    counts = ("loss", "top1", "top5", "n", "seconds")
    if stats is not None and not (isinstance(stats, dict) and
                                  all(json_number(stats.get(k), finite=True) and stats[k] >= 0 for k in counts)):
        return f"'epoch_stats' is {stats!r}, not the counts of an epoch in progress"
    for key in ("scheduler", "record"):
        if state[key] is not None and not isinstance(state[key], dict):
            return f"{key!r} is {state[key]!r}, not a JSON object"
    return None


# ---------------------------------------------------------------- devices

def resolve_devices(spec, towers):
    """The towers' logical devices ("cpu:0", "cuda:1", ...); a clear error for devices that do
    not exist. By default one logical device per tower: cuda:0, cuda:1 when a GPU is visible
    (both on the one GPU when there is only one), else cpu:0, cpu:1 (both on the CPU)."""
    import convnet
    from convnet import _C

    if spec is None:
        kind = "cuda" if convnet.cuda_available() else "cpu"
        return [f"{kind}:{i}" for i in range(towers)]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise TrainingError(f"--devices: no device given in {spec!r}")
    for n in names:
        try:
            d = _C.parse_device(n.split(":")[0] if n.startswith("cpu") else n)
        except (ValueError, RuntimeError) as e:
            raise TrainingError(f"--devices: {n!r} is not usable: {e}") from None
        if d.startswith("cuda"):
            index = int(d.split(":")[1])
            count = convnet.device_count() if _C.cuda_built() else 0
            if index >= count:
                raise TrainingError(f"--devices: {n} does not exist (this machine has {count} GPU(s))")
        elif not (n == "cpu" or (n.startswith("cpu:") and n[4:].isdigit())):
            raise TrainingError(f"--devices: {n!r} is not a device name (cpu, cpu:N or cuda:N)")
    if len(names) == 1:
        names = names * towers
    if len(names) != towers:
        raise TrainingError(f"--devices: give one device or one per tower ({towers}), got {len(names)}")
    return names


def physical(device):
    """The device a logical device name runs on ("cpu:1" -> "cpu")."""
    from convnet import _C

    return "cpu" if device.startswith("cpu") else _C.parse_device(device)


# ---------------------------------------------------------------- data

def open_data(args):
    from convnet import data

    if args["data"] in (None, "builtin"):  # "builtin" as open_dataset takes it: was "does not exist"
        from convnet.data import builtin
        size = dict(size=args.get("image_size", 64), num_train=args.get("num_train", 10000),
                    num_val=args.get("num_val", 2000))
        path = builtin.default_path(**size)
        print(f"data: built-in dataset at {path} (generated on first use)", flush=True)
        try:
            builtin.ensure(path, **size)
        except builtin.BuiltinError as e:  # the folder, not the flags (CONVNET_DATA picks it)
            raise TrainingError(str(e)) from None
        except ValueError as e:
            raise TrainingError(f"--num-train, --num-val, --image-size: {e}") from None
        args["data"] = str(path)
    path = Path(args["data"]).expanduser()
    if not path.exists():
        raise TrainingError(f"--data: {path} does not exist")
    args["data"] = str(path.resolve())  # kept absolute: --resume works from any working folder
    try:
        ds = data.open_dataset(str(path))
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise TrainingError(f"--data: {path} is not a prepared dataset: {e}\n"
                            f"prepare ImageNet with convnet-prepare, or pass a cifar-10-batches-py "
                            f"folder or a built-in dataset folder") from None
    return ds


def dataset_fingerprint(ds):
    """What identifies a dataset wherever it lies (a SHA-256): its classes and image size, and
    per split the labels and the first and last images, all as stored (nothing recomputed, so
    no rounding can differ)."""
    h = hashlib.sha256(json.dumps([ds.classes, ds.image_size]).encode())
    for split in (ds.train, ds.val):
        if split is None:
            h.update(b"no split")
            continue
        h.update(np.asarray(split.labels, np.int64).tobytes())
        for image in (split.images[:1], split.images[-1:]):
            h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _same_folder(a, b):
    return None not in (a, b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _limit(split, n):
    """A view of the first n images of a split (smoke runs); the split itself when n is None."""
    if split is None or n is None or n >= len(split.labels):
        return split
    return _Subset(split, n)


class _Subset:
    def __init__(self, split, n):
        self._split = split
        self.images = split.images[:n]
        self.labels = split.labels[:n]

    def __len__(self):
        return len(self.labels)

    def __getattr__(self, name):
        return getattr(self._split, name)


# ---------------------------------------------------------------- model

def build_model(args, num_classes, devices):
    from convnet import models

    if args["model"] == "alexnet":
        return models.alexnet(towers=args["towers"], devices=devices, num_classes=num_classes,
                              input_size=args["crop"], width=args["width"],
                              extra_conv=args["extra_conv"], seed=args["seed"],
                              dropout=args["dropout"], weight_std=args["weight_std"])
    widths, conv1 = _int_list(args, "widths"), _int_list(args, "conv1")
    return models.small_alexnet(num_classes=num_classes, input_size=args["crop"], widths=widths[:5],
                                fc=widths[5:], conv1=conv1, towers=args["towers"], devices=devices,
                                seed=args["seed"], dropout=args["dropout"], weight_std=args["weight_std"])


# ---------------------------------------------------------------- metrics

def topk_correct(logits, labels, k=5):
    """(number right at top-1, number right at top-k) for a batch of logits (N, C)."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    best = np.argmax(logits, axis=1)
    return int((best == labels).sum()), int((top == labels[:, None]).any(axis=1).sum())


class Progress:
    """A progress bar per epoch: tqdm when importable, else a simple one on stderr."""

    def __init__(self, total, desc, enabled=True, initial=0):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n, self.start, self._bar, self._last = initial, time.time(), None, 0.0
        self._initial = initial
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr,
                                 dynamic_ncols=True, leave=True, initial=initial)
            except ImportError:
                self._bar = None

    def update(self, **stats):
        self.n += 1
        if not self.enabled:
            return
        text = " ".join(f"{k} {v}" for k, v in stats.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        now = time.time()
        if now - self._last < 0.5 and self.n < self.total:
            return
        self._last = now
        elapsed = now - self.start
        left = elapsed / max(1, self.n - self._initial) * (self.total - self.n)
        filled = int(30 * self.n / max(1, self.total))
        sys.stderr.write(f"\r{self.desc} [{'=' * filled}{' ' * (30 - filled)}] {self.n}/{self.total} "
                         f"{text} left {_clock(left)} ")
        sys.stderr.flush()

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------- non-finite diagnosis

def layer_names(net):
    """The net's learned layers in forward order, from its parameter names ('conv1.weight' ->
    'conv1'); features(layer=...) joins a layer's parts on both towers."""
    names = []
    for key in net.state_dict():
        layer = key.rsplit(".", 1)[0]
        if layer not in names:
            names.append(layer)
    return names


def diagnose_nonfinite(net, images):
    """Where non-finite values first appear: (bad parameters, first layer with a non-finite output).

    Re-runs the forward (no dropout) up to each learned layer in turn and checks its output; the
    first layer whose output is not finite is where the NaN/inf was born (given finite inputs)."""
    bad_params = [k for k, v in net.state_dict().items() if not np.all(np.isfinite(v))]
    first = None
    if not np.all(np.isfinite(images.numpy())):
        return bad_params, "input images"
    for layer in layer_names(net):
        try:
            out = net.features(images, layer=layer)
        except ValueError as e:  # a later layer's own finiteness check: this layer's output is bad
            if "NaN or infinite" in str(e):
                first = layer
                break
            continue
        if not np.all(np.isfinite(out)):
            first = layer
            break
    return bad_params, first


# ---------------------------------------------------------------- checkpoints

def checkpoint_path(run_dir, which="last"):
    """The weights file of a run's checkpoint; its metadata sits next to it (suffix .json)."""
    return Path(run_dir) / f"checkpoint-{which}.safetensors"


def find_checkpoint(path):
    """(checkpoint, run folder): a run folder -> its last checkpoint; a checkpoint's .safetensors
    or .json file -> that checkpoint."""
    p = Path(path)
    if p.is_dir():
        last, best = checkpoint_path(p, "last"), checkpoint_path(p, "best")
        # only "best" when a run was killed between the two saves of its first epoch ("best" goes first)
        if not last.with_suffix(".json").exists() and best.with_suffix(".json").exists():
            return best, p
        return last, p
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    return p, p.parent


def checkpoint_towers(ckpt):
    """The net's tower count (1 or 2) from its checkpoint's metadata, for --devices before the net
    is built (a 1-tower net took two devices, and three were "not one per tower (2)"); 2 when it
    cannot be read: checkpoint.load() then says what is wrong."""
    from convnet import checkpoint

    try:
        towers = json.loads(checkpoint.meta_path(ckpt).read_text())["convnet"]["config"]["towers"]
    except (OSError, ValueError, KeyError, TypeError):
        return 2
    return 1 if towers == 1 else 2


# ---------------------------------------------------------------- training

def _refuse_a_held_run(run_dir):
    """A new run into a folder that holds one would empty the old one's metrics and replace its
    checkpoints: refused."""
    held = [f.name for f in (checkpoint_path(run_dir), checkpoint_path(run_dir, "best"), run_dir / "metrics.jsonl")
            if f.is_file() and f.stat().st_size > 0]
    if held == ["metrics.jsonl"]:
        raise TrainingError(f"--run-dir {_no_checkpoint(run_dir)}")
    if held:
        raise TrainingError(f"--run-dir {run_dir} already holds a run ({', '.join(held)}): continue it with "
                            f"--resume {run_dir}, or choose another --run-dir")


def _lock_run_dir(run_dir, flag):
    """The open, locked RUN/.lock: one convnet-train at a time in a run folder (two at once wrote
    every epoch's metrics twice and each other's checkpoints). Closing the file, or the process
    dying, releases it; it holds the holder's pid, to name it to a refused run."""
    import fcntl
    import os

    try:
        f = open(run_dir / ".lock", "a+")
    except OSError as e:
        raise TrainingError(f"{flag} {run_dir}: cannot write there: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise TrainingError(f"{flag} {run_dir} is in use by another convnet-train" +
                            (f" (pid {pid})" if pid else "")) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def train(argv=None, step_hook=None):
    """Run training; returns the run folder. step_hook(net, step) is called before every
    training step (tests use it to inject faults). Raises TrainingError for user errors."""
    import contextlib

    # holds the run folder's lock once taken, and releases it however training ends (Ctrl-C too:
    # a traceback kept alive by the caller would keep the open file, and the lock, for good)
    with contextlib.ExitStack() as locks:
        return _train(argv, step_hook, locks)


def _train(argv, step_hook, locks):
    from convnet import checkpoint, optim

    ns = build_parser().parse_args(argv)
    args, explicit = resolve_args(ns)
    for key in ("run_dir", "resume"):  # "" was taken as not given: a new run into runs/<model>-<time>
        if args[key] == "":
            raise TrainingError(f"--{key.replace('_', '-')}: the name is empty")

    state = None
    if args["resume"]:
        ckpt, run_dir = find_checkpoint(args["resume"])
        if not Path(args["resume"]).exists() and not (ckpt.suffix == ".safetensors"
                                                      and ckpt.with_suffix(".json").exists()):
            raise TrainingError(f"--resume {args['resume']}: no such run folder or checkpoint (a run stopped "
                                f"before it made its folder is started again with --run-dir)")
        if Path(args["resume"]).is_dir() and not checkpoint.meta_path(ckpt).exists():
            raise TrainingError(f"--resume: {_no_checkpoint(run_dir)}")
        if args["run_dir"] is not None and not _same_folder(args["run_dir"], run_dir):  # it trained into RUN
            raise TrainingError(f"--run-dir {args['run_dir']} is not the folder of the run to resume ({run_dir}): "
                                f"a resumed run goes on in its own folder; leave --run-dir out")
        spec = args["devices"]
        if "devices" not in explicit:  # continue on the run's own devices, not this machine's default
            try:
                spec = json.loads(checkpoint.meta_path(ckpt).read_text())["train"]["args"]["devices"]
            except (OSError, ValueError, KeyError, TypeError):
                spec = None  # a bad checkpoint: load() below says what is wrong
            if not isinstance(spec, str):
                spec = None  # likewise (check_train_record)
        try:
            devices = resolve_devices(spec, checkpoint_towers(ckpt))
        except TrainingError as e:
            if "devices" in explicit:
                raise
            # the user gave no --devices: the run's own (from a GPU machine, say) are not usable here
            raise TrainingError(f"--resume: the run's devices {spec} are not usable here "
                                f"({str(e).split(': ', 1)[-1]}): continue it with --devices cpu "
                                f"(or a device of this machine)") from None
        try:
            # what was loaded, to see under the run's lock that no other run saved there since
            loaded = checkpoint.meta_path(ckpt).read_bytes()
            net, opt_state, meta = checkpoint.load(str(ckpt), devices=devices)
        except (FileNotFoundError, OSError, ValueError, KeyError) as e:
            raise TrainingError(f"--resume: cannot load a checkpoint from {args['resume']}: {e}") from None
        if not isinstance(meta.get("train"), dict) or not isinstance(meta["train"].get("args"), dict):
            raise TrainingError(f"--resume: {ckpt} was not written by convnet-train (no 'train' record "
                                "with its 'args' in the metadata)")
        why = check_train_record(meta["train"])
        if why is not None:
            raise TrainingError(f"--resume: the train record in {checkpoint.meta_path(ckpt)} is damaged: {why}")
        saved = meta["train"]["args"]
        # --data may name the run's dataset by another path (moved, or relative): checked by content below
        for k in explicit - RESUMABLE_OVERRIDES - {"resume", "run_dir", "data"}:
            if saved.get(k) != args[k]:
                raise TrainingError(f"--resume: --{k.replace('_', '-')} {args[k]} differs from the "
                                    f"run's {saved.get(k)}; only {sorted(RESUMABLE_OVERRIDES)} may change")
        run_data = saved.get("data")
        for k in (RESUMABLE_OVERRIDES | {"data"}) & explicit:
            saved[k] = args[k]
        saved["resume"] = args["resume"]
        args = saved
        state = meta["train"]
        run_dir = Path(run_dir)
    else:
        run_dir = Path(args["run_dir"] or f"runs/{args['model']}-{time.strftime('%Y%m%d-%H%M%S')}")
        _refuse_a_held_run(run_dir)  # again under the lock: another run may take the folder meanwhile

    check_args(args)
    if state is not None and state["epoch"] >= args["epochs"]:  # the loop would train nothing, unsaid
        print(f"{run_dir} has already trained {state['epoch']} epochs: nothing to do "
              f"(raise --epochs to train more)", flush=True)
        return run_dir
    devices = resolve_devices(args["devices"], args["towers"])
    ds = open_data(args)
    fingerprint = dataset_fingerprint(ds)
    if state is not None:
        want = state.get("data_fingerprint")
        if want is None and not _same_folder(args["data"], run_data):  # a run from before fingerprints
            raise TrainingError(f"--resume: --data {args['data']} is not the run's data folder {run_data} "
                                f"(relative to where the run started)")
        if want is not None and want != fingerprint:
            raise TrainingError(f"--resume: {args['data']} is not the dataset this run trained on "
                                f"({run_data}): its classes, labels or images differ")
    num_classes = len(ds.classes)
    train_split = _limit(ds.train, args["limit_train"])
    val_split = _limit(ds.val, args["limit_val"])
    if train_split is None or len(train_split.labels) < args["batch_size"]:  # every epoch would take no step
        raise TrainingError(f"{0 if train_split is None else len(train_split.labels)} training images make no "
                            f"full batch of {args['batch_size']} (--batch-size, --limit-train)")
    if args["crop"] > ds.image_size:
        raise TrainingError(f"--crop {args['crop']} is larger than the dataset's images ({ds.image_size})")
    if val_split is None and args["schedule"] == "plateau":
        raise TrainingError(f"--data {args['data']} has no validation split, and the plateau schedule cuts the "
                            f"learning rate when the validation error stops improving: use --schedule step "
                            f"--milestones EPOCHS, or prepare the data with a validation split")
    data_dir = Path(args["data"])  # absolute (open_data)
    if state is None and data_dir in (run_dir.resolve(), *run_dir.resolve().parents):
        # checkpoints in the dataset's folder, which the built-in dataset then refuses to regenerate
        raise TrainingError(f"--run-dir {run_dir} is {'the' if data_dir == run_dir.resolve() else 'inside the'} "
                            f"--data folder {data_dir}: choose a --run-dir outside it")

    resumed = state is not None
    if not resumed:
        try:
            net = build_model(args, num_classes, devices)
        except (ValueError, RuntimeError) as e:  # RuntimeError: out of memory (--widths 8,...,10**11)
            raise TrainingError(f"cannot build the {args['model']} net: {e}") from None
        opt = optim.SGD(net, lr=args["lr"], momentum=args["momentum"], weight_decay=args["weight_decay"])
        state = dict(args=args, epoch=0, batch=0, step=0, lr=args["lr"], cuts=[], best_val_error=None,
                     scheduler=None, epoch_stats=None, data_fingerprint=fingerprint, record=None)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file there or above it, or a place that takes no folder (/proc/...)
            why = "a file of that name exists" if run_dir.is_file() else e.strerror or e
            raise TrainingError(f"--run-dir {run_dir}: cannot create the folder ({why})") from None
        locks.enter_context(_lock_run_dir(run_dir, "--run-dir"))
        _refuse_a_held_run(run_dir)  # another new run may have passed the check above with this one
        (run_dir / "args.json").write_text(json.dumps(args, indent=2) + "\n")
        (run_dir / "metrics.jsonl").write_text("")
    else:
        if net.config.get("num_classes", num_classes) != num_classes:
            raise TrainingError(f"--resume: the checkpoint's net has {net.config.get('num_classes')} "
                                f"classes, the data {num_classes}")
        opt = optim.SGD(net, lr=state["lr"], momentum=args["momentum"], weight_decay=args["weight_decay"])
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        opt.lr = state["lr"]
        state["data_fingerprint"] = fingerprint  # a run from before fingerprints gets one
        locks.enter_context(_lock_run_dir(run_dir, "--resume"))
        try:
            changed = checkpoint.meta_path(ckpt).read_bytes() != loaded
        except OSError:
            changed = True
        if changed:  # a run there saved (or finished) since this one loaded its checkpoint
            raise TrainingError(f"--resume: {run_dir} changed while this run was starting (another "
                                f"convnet-train saved there): run the command again")

    scheduler = make_scheduler(args, opt)
    if state.get("scheduler") is not None:
        try:
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, TypeError, KeyError) as e:
            raise TrainingError(f"--resume: the learning-rate schedule's state in the checkpoint is damaged: "
                                f"{type(e).__name__}: {e}") from None
    if resumed:  # its first write, after every check (metrics.jsonl was cut, then a damaged schedule refused)
        _metrics_as_of(run_dir, state)
        print(f"resume: {run_dir} at epoch {state['epoch'] + 1}, batch {state['batch']}, "
              f"step {state['step']}, lr {state['lr']:g}", flush=True)
    for f in checkpoint.remove_stale_temporaries(run_dir):
        print(f"removed {f}: the temporary of a save that was killed", flush=True)

    towers = "1 tower (grouped)" if args["towers"] == 1 else f"{args['towers']} towers"
    print(f"model: {args['model']}, {towers} on {','.join(devices)}, "
          f"{sum(int(np.prod(v.shape)) for v in net.state_dict().values()):,} parameters", flush=True)
    print(net, flush=True)
    print(f"data: {len(train_split.labels)} training / {len(val_split) if val_split else 'no'} validation images, "
          f"{num_classes} classes, {ds.image_size}px stored, {args['crop']}px crops", flush=True)
    print(f"recipe: batch {args['batch_size']}, lr {args['lr']:g}, momentum {args['momentum']}, "
          f"weight decay {args['weight_decay']}, {args['schedule']} schedule, {args['epochs']} epochs, "
          f"run folder {run_dir}", flush=True)

    interrupt = _DeferredInterrupt()
    with interrupt:  # also around the save below: a second signal there must not kill it half-way
        try:
            _loop(args, state, net, opt, scheduler, ds, train_split, val_split, devices, run_dir,
                  step_hook, interrupt)
        except KeyboardInterrupt:
            _save_on_interrupt(interrupt, run_dir, net, opt, state)

    if interrupt.signum is not None:  # it came during the last epoch's end: the run is complete
        print(f"\n{interrupt.what()} at the end of the last epoch: the run is complete ({checkpoint_path(run_dir)})"
              + (f"; pictures not drawn: python -m convnet.plots {run_dir}" if args["plots"] else ""), flush=True)
        raise TrainingError("interrupted", code=interrupt.exit_code())
    if args["plots"]:
        from convnet import plots
        print("pictures: drawing learning curves, conv1 kernels" +
              (" (no validation split: no predictions)" if val_split is None else " and predictions") + " ...",
              flush=True)
        try:
            for path in plots.draw_all(run_dir, net=net, dataset=ds, crop=args["crop"]):
                print(f"  wrote {path}", flush=True)
        except Exception as e:  # noqa: BLE001 - the run is complete: a picture must not turn it into a traceback
            print(f"pictures: not drawn ({type(e).__name__}: {e}); the run is complete: draw them with "
                  f"python -m convnet.plots {run_dir}", file=sys.stderr, flush=True)
    return run_dir


def _save_on_interrupt(interrupt, run_dir, net, opt, state):
    """After a Ctrl-C or SIGTERM: the checkpoint of the last complete step, then TrainingError
    (exit 128 + the signal's number: 130, 143)."""
    code, what = interrupt.exit_code(), interrupt.what()
    if interrupt.updating:  # a second signal inside an update: weights and position disagree
        print(f"\n{what} during the update of step {state['step']}: nothing saved, "
              f"{_kept(run_dir)}; continue with --resume {run_dir}", flush=True)
        raise TrainingError("interrupted", code=code) from None
    # A second signal in the epoch's own saves: saving "last" now could leave "best" an older epoch
    stopped_saving = interrupt.saving
    if not stopped_saving:
        try:
            save(run_dir, net, opt, state, "last")
        except KeyboardInterrupt:  # a second signal during this save
            stopped_saving = True
    if stopped_saving:  # each save is all or nothing
        print(f"\n{what} again while saving: {run_dir} keeps this checkpoint or the one before; "
              f"continue with --resume {run_dir}", flush=True)
        raise TrainingError("interrupted", code=code) from None
    print(f"\n{what}: saved {checkpoint_path(run_dir)} at epoch {state['epoch'] + 1}, batch "
          f"{state['batch']}; continue with --resume {run_dir}", flush=True)
    raise TrainingError("interrupted", code=code) from None


class _DeferredInterrupt:
    """Holds a Ctrl-C (SIGINT), or a SIGTERM (what `kill` and a cluster's scheduler send before
    they stop a job), until the current training step is complete, so that the checkpoint written
    then has weights, momentum and position that belong together; a second signal interrupts at
    once (a KeyboardInterrupt). Without it a SIGTERM ended the run where it stood, losing the
    epoch so far. `updating` is true while the weights change and the position (step, batch) has
    not yet followed: a checkpoint written then would be neither step. `saving` is true during the
    checkpoints and metrics line of an epoch's end. `signum`: the first signal, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.updating = False
        self.saving = False
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise _signals.interrupt_for(signum)
        self.signum = signal.Signals(signum)

    def check(self):
        if self.signum is not None:
            raise _signals.interrupt_for(self.signum)

    def what(self):
        """How the run ended, for its last message (a KeyboardInterrupt with no signal: a Ctrl-C)."""
        return _signals.describe(self.signum or signal.SIGINT)

    def exit_code(self):
        """130 for Ctrl-C (or a KeyboardInterrupt with no signal), 143 for SIGTERM."""
        return _signals.exit_code(self.signum or signal.SIGINT)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False


def make_scheduler(args, opt):
    """The learning-rate schedule; its step() after each epoch sets opt.lr for the next."""
    from convnet import optim

    if args["schedule"] == "step":
        milestones = _int_list(args, "milestones") or []
        return optim.StepSchedule(opt, milestones, factor=args["lr_factor"], base_lr=args["lr"])
    return optim.ReduceOnPlateau(opt, factor=args["lr_factor"], patience=args["patience"],
                                 max_cuts=args["max_cuts"])


def save(run_dir, net, opt, state, which):
    from convnet import checkpoint

    path = checkpoint_path(run_dir, which)
    try:
        checkpoint.save(str(path), net, opt, {"train": state})
    except OSError as e:  # disk full, no permission: a save is all or nothing, so the one before stands
        raise TrainingError(f"could not write {path}: {e.strerror or e}; {run_dir} keeps its checkpoint "
                            f"from before: continue with --resume {run_dir} once it can be written", code=1) from None


def _loop(args, state, net, opt, scheduler, ds, train_split, val_split, devices, run_dir, step_hook,
          interrupt):
    from convnet import data, optim

    pca = (ds.pca_eigval, ds.pca_eigvec)
    common = dict(crop=args["crop"], mean=ds.mean, device=physical(devices[0]))
    while state["epoch"] < args["epochs"]:
        epoch = state["epoch"]
        loader = data.Loader(train_split, args["batch_size"], train=True, pca=pca, flip=args["flip"],
                             lighting=args["lighting"], seed=args["seed"], epoch=epoch,
                             start_batch=state["batch"], **common)
        stats = state["epoch_stats"] or dict(loss=0.0, top1=0, top5=0, n=0, seconds=0.0)
        # len(loader) is the whole epoch's batches, a resumed one's too (len + batch overshot)
        bar = Progress(len(loader), f"epoch {epoch + 1}/{args['epochs']}", args["progress"],
                       initial=state["batch"])
        t0 = time.time()
        seconds0 = stats["seconds"]
        batches = iter(loader)
        try:  # closed here, not when collected: a second signal inside its close was "Exception ignored"
            for images, labels in batches:
                interrupt.check()  # between steps only: the checkpoint stays consistent
                if step_hook is not None:
                    step_hook(net, state["step"])
                if args["check_every"] and state["step"] % args["check_every"] == 0:
                    # The loss alone can miss a NaN: ReLU maps NaN to 0, hiding it from the layers after.
                    bad = nonfinite_params(net)
                    if bad:
                        stop_nonfinite(net, images, None, state, run_dir, bad_weights=bad)
                # Dropout masks depend on (seed, step) only: the step makes a resumed run identical.
                try:
                    logits, loss = net.forward(images, labels, train=True, step=state["step"])
                except ValueError as e:  # a kernel's finiteness check (e.g. of the logits) fired
                    if "NaN or infinite" not in str(e):
                        raise
                    stop_nonfinite(net, images, float("nan"), state, run_dir)
                if not math.isfinite(loss):
                    stop_nonfinite(net, images, loss, state, run_dir)
                net.backward()
                interrupt.updating = True
                opt.step()
                y = labels.numpy()
                t1, t5 = topk_correct(logits.numpy(), y)
                n = len(y)
                stats["loss"] += loss * n
                stats["top1"] += t1
                stats["top5"] += t5
                stats["n"] += n
                stats["seconds"] = seconds0 + time.time() - t0
                state["batch"] += 1
                state["step"] += 1
                state["epoch_stats"] = stats
                interrupt.updating = False
                bar.update(loss=f"{stats['loss'] / stats['n']:.3f}",
                           top1=f"{100 * stats['top1'] / stats['n']:.1f}%",
                           top5=f"{100 * stats['top5'] / stats['n']:.1f}%",
                           ips=f"{stats['n'] / max(stats['seconds'], 1e-9):.0f}img/s")
        finally:
            batches.close()
        bar.close()

        # without a validation split: nulls in the record, and no "best" checkpoint
        val = (dict(loss=None, top1=None, top5=None) if val_split is None
               else evaluate_split(net, val_split, args["batch_size"], common))
        record = dict(epoch=epoch + 1, step=state["step"], lr=opt.lr,
                      train_loss=stats["loss"] / max(1, stats["n"]),
                      train_top1=stats["top1"] / max(1, stats["n"]),
                      train_top5=stats["top5"] / max(1, stats["n"]),
                      val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"],
                      images_per_s=stats["n"] / max(stats["seconds"], 1e-9),
                      seconds=stats["seconds"], devices=devices)
        validation = "no validation split" if val_split is None else (
            f"validation loss {val['loss']:.4f} top-1 {100 * val['top1']:.2f}% top-5 {100 * val['top5']:.2f}% "
            f"(error {100 * (1 - val['top1']):.2f}% / {100 * (1 - val['top5']):.2f}%)")
        print(f"epoch {epoch + 1}/{args['epochs']}: train loss {record['train_loss']:.4f} "
              f"top-1 {100 * record['train_top1']:.2f}% | {validation} | "
              f"lr {opt.lr:g} | {record['images_per_s']:.0f} img/s, {record['seconds']:.0f}s",
              flush=True)

        old_lr = opt.lr
        if isinstance(scheduler, optim.StepSchedule):
            scheduler.step(epoch + 1)
        else:  # plateau: there is a validation split (checked before the run started)
            scheduler.step(1 - val["top1"])
        cuts = state["cuts"]  # into state with the rest of the epoch's end: a second signal before that
        if opt.lr != old_lr:   # saved the epoch in progress with its cut, and the resumed run cut again
            record["lr_cut_to"] = opt.lr
            cuts = cuts + [epoch + 1]
            print(f"learning rate {old_lr:g} -> {opt.lr:g}", flush=True)

        bad = nonfinite_params(net)
        if bad:  # never write a checkpoint with NaN weights
            stop_nonfinite(net, None, None, state, run_dir, bad_weights=bad)
        interrupt.saving = True
        improved = val_split is not None and (state["best_val_error"] is None
                                              or 1 - val["top1"] < state["best_val_error"])
        state.update(epoch=epoch + 1, batch=0, lr=opt.lr, epoch_stats=None, cuts=cuts,
                     scheduler=scheduler.state_dict(), record=record)
        if improved:
            state["best_val_error"] = 1 - val["top1"]
            # before "last": a crash between the two redoes this epoch on --resume, which writes
            # "best" again; the other way round "best" kept an older epoch for good
            save(run_dir, net, opt, state, "best")
        save(run_dir, net, opt, state, "last")
        # The epoch's line after its checkpoint: a crash between the two leaves the line out, and
        # --resume restores it from the checkpoint's record (first the line, then the checkpoint,
        # recorded the epoch twice after a resume, and trapped a run killed in its first save).
        try:
            with open(Path(run_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise TrainingError(f"could not append to {Path(run_dir) / 'metrics.jsonl'}: {e.strerror or e}; "
                                f"--resume {run_dir} restores the line from the checkpoint", code=1) from None
        interrupt.saving = False


def nonfinite_params(net):
    """Names of the parameters holding NaN or infinite values (one pass over each, on its device)."""
    from convnet import _C

    bad = []
    for p in net.params():
        try:
            _C.check_finite(p.data, p.key)
        except ValueError:
            if p.key not in bad:
                bad.append(p.key)
    return bad


def stop_nonfinite(net, images, loss, state, run_dir, bad_weights=None):
    # at step 0 no update has run: the rate is not the cause (--weight-std 1e20 was told to lower it)
    hint = "try a smaller --lr" if state["step"] else "no update had run yet: look at --weight-std and the data"
    if bad_weights:
        first = bad_weights[0].rsplit(".", 1)[0]
        raise TrainingError(
            f"training stopped: non-finite weights at step {state['step']} (epoch {state['epoch'] + 1}, "
            f"batch {state['batch']}), found before its forward: first non-finite values in layer "
            f"{first}; non-finite parameters: {', '.join(bad_weights)}. {_kept(run_dir)}; {hint}.",
            code=EXIT_NONFINITE)
    bad_params, first = diagnose_nonfinite(net, images)
    where = (f"first non-finite output at layer {first}" if first
             else "every layer's output is finite: the loss itself overflowed")
    params = f"; non-finite parameters: {', '.join(bad_params)}" if bad_params else ""
    raise TrainingError(
        f"training stopped: the loss became {loss} at step {state['step']} (epoch {state['epoch'] + 1}, "
        f"batch {state['batch']}); {where}{params}. {_kept(run_dir)}; {hint}.", code=EXIT_NONFINITE)


def _no_checkpoint(run_dir):
    """What to do with a run folder that holds no checkpoint."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return (f"{run_dir} holds {metrics.name} but no checkpoint to continue from (a run killed in its "
                f"first save, or its checkpoints were removed): remove {metrics} to start a new run there, "
                f"or choose another --run-dir")
    return (f"{run_dir} holds no checkpoint (the run stopped before its first save): start it again "
            f"with --run-dir {run_dir}")


def _metrics_as_of(run_dir, state):
    """Rewrite metrics.jsonl to the checkpoint's epochs: lines past it (a resume from
    checkpoint-best, or a run of older code killed between its line and its save) would record
    epochs twice, and the checkpoint's own epoch's line is restored from the checkpoint when a
    crash came between its save and the line (or cut the line short)."""
    from convnet import _files

    path = Path(run_dir) / "metrics.jsonl"
    old = path.read_text() if path.is_file() else ""
    records = {}
    for line in old.splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] <= state["epoch"]:
            records[r["epoch"]] = r
    if state.get("record"):
        records[state["epoch"]] = state["record"]
    text = "".join(json.dumps(records[e]) + "\n" for e in sorted(records))
    if text != old:
        _files.atomic_write(path, [text.encode()])
        print(f"resume: {path} rewritten to the checkpoint's epochs ({len(records)})", flush=True)


def _kept(run_dir):
    last = checkpoint_path(run_dir)
    return f"the last good checkpoint {last} is untouched" if last.exists() else "no checkpoint was written yet"


def evaluate_split(net, split, batch_size, common):
    """Validation loss, top-1 and top-5 accuracy with the centre crop."""
    from convnet import data

    loader = data.Loader(split, batch_size, train=False, **common)
    loss = top1 = top5 = n = 0
    for images, labels in loader:
        logits, batch_loss = net.forward(images, labels, train=False)
        y = labels.numpy()
        t1, t5 = topk_correct(logits.numpy(), y)
        loss += batch_loss * len(y)
        top1 += t1
        top5 += t5
        n += len(y)
    n = max(n, 1)
    return dict(loss=loss / n, top1=top1 / n, top5=top5 / n)


@_signals.command("convnet-train")  # a signal outside the training steps (making the data, the pictures)
def main(argv=None):
    start = time.time()
    try:
        run_dir = train(argv)
    except TrainingError as e:
        if str(e) != "interrupted":
            print(f"convnet-train: {e}", file=sys.stderr, flush=True)
        sys.exit(e.code)
    print(f"done in {_clock(time.time() - start)}: {run_dir}", flush=True)


if __name__ == "__main__":
    main()
