"""AlexNet and its variants as layer graphs (convnet/graph.py).

Choices where the paper leaves room (also in README.md):
- conv1 at a 224x224 input uses padding 2: (224 + 2*2 - 11) // 4 + 1 = 55, the paper's 55x55,
  so the net takes the paper's 224 crops (not 227 crops without padding).
- extra_conv=True adds the paper's sixth conv layer "after the last pooling layer": conv6,
  3x3, stride 1, pad 1, as many kernels as conv5 (256), per tower like conv4/conv5 (groups=2 in
  one device), with a ReLU. It keeps pool5's 6x6x256 shape, so fc6 is unchanged.
- half=True is the paper's one-GPU net "with half the kernels in each conv layer": conv1..conv4
  halved (48, 128, 192, 192), no groups; like the paper, conv5 (256) and the FC layers keep their
  size so that the two nets have about the same number of parameters.
- With two towers fc8 is one layer on the first tower reading both towers' fc7 (a crossover).
- LRN normalises within a tower; in the one-device net the LRN layers therefore use groups=2,
  so that towers=1 and towers=2 compute the same function from the same weights.

Every net carries `net.config` (JSON-able) and `build(config)` rebuilds it (for checkpoints).
"""
import math

from ._checks import flag, integer, number
from .graph import Net

ALEXNET_WIDTHS = (96, 256, 384, 384, 256)
ALEXNET_FC = (4096, 4096)
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # the paper's biases of 1 (the rest 0)


def _ints(v, what, n, minimum=1):
    """v as a tuple of n integers, each at least its minimum (ValueError otherwise)."""
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ValueError(f"{what} must be a list of {n} integers, got {v!r}")
    mins = minimum if isinstance(minimum, tuple) else (minimum,) * n
    return tuple(integer(x, f"{what}[{i}]", m, error=ValueError) for i, (x, m) in enumerate(zip(v, mins)))


def _even(x):
    """Round a channel count to a positive multiple of 2 (so it splits into two towers / groups)."""
    return max(2, int(round(x / 2.0)) * 2)


def tower_specs(towers=2, num_classes=1000, input_size=224, widths=ALEXNET_WIDTHS, fc=ALEXNET_FC,
                conv1=(11, 4, 2), conv2_kernel=5, dropout=0.5, extra_conv=False, groups=True,
                lrn=(5, 1e-4, 0.75, 2.0), pool=(3, 2), weight_std=0.01):
    """The layer specs of AlexNet's structure: conv1 (ReLU, LRN, pool), conv2 (ReLU, LRN, pool),
    conv3 (crossover), conv4, conv5 (pool), [conv6], fc6 (crossover), fc7 (crossover), fc8, loss.

    towers=2: every layer has a part on tower 0 ("_a") and on tower 1 ("_b") holding half the
    kernels; towers=1 with groups=True: one device, conv2/conv4/conv5 grouped in 2 (the same
    function); towers=1 with groups=False: a plain one-column net."""
    # towers and extra_conv come checked from alexnet() / small_alexnet() (their only callers)
    if towers not in (1, 2):
        raise ValueError(f"towers must be 1 or 2, got {towers}")
    # (from a user or a checkpoint's config: "x" % 2 was a TypeError about string formatting)
    widths, fc = _ints(widths, "widths", 5), _ints(fc, "fc", 2)
    conv1 = _ints(conv1, "conv1 (kernel, stride, padding)", 3, minimum=(1, 1, 0))
    num_classes = integer(num_classes, "num_classes", 1, error=ValueError)
    input_size = integer(input_size, "input_size", 1, error=ValueError)
    w1, w2, w3, w4, w5 = widths
    f6, f7 = fc
    if towers == 2 and any(w % 2 for w in (w1, w2, w3, w4, w5, f6, f7)):
        raise ValueError(f"two towers need even widths, got {widths} and fc {fc}")
    g = 2 if (towers == 1 and groups) else 1  # groups inside one device for the tower-local layers
    n_size, alpha, beta, k = lrn
    psize, pstride = pool
    suffix = ["_a", "_b"] if towers == 2 else [""]
    specs = [{"name": "data", "type": "input", "shape": [3, input_size, input_size]}]

    def per_tower(group, type_, inputs, **kw):
        """One layer per tower; inputs(t) gives the names tower t reads; kw may hold 'out'."""
        out_key = {"conv": "out_channels", "linear": "out_features"}.get(type_)
        for t, s in enumerate(suffix):
            spec = {"name": group + s, "type": type_, "inputs": inputs(t), "tower": t, "group": group}
            spec.update({k_: v for k_, v in kw.items() if k_ != "out"})
            if out_key:
                full = kw["out"]
                spec[out_key] = full // towers
                spec["rows"] = [t * full // towers, full]
                spec["weight_std"] = weight_std
                spec["bias_init"] = 1.0 if group in BIAS_ONE else 0.0
            specs.append(spec)

    own = lambda name: (lambda t: [name + suffix[t]])  # noqa: E731 - the same tower's layer
    both = lambda name: (lambda t: [name + s for s in suffix])  # noqa: E731 - crossover
    lrn_kw = dict(size=n_size, alpha=alpha, beta=beta, k=k)

    k1, s1, p1 = conv1
    per_tower("conv1", "conv", lambda t: ["data"], out=w1, kernel=k1, stride=s1, padding=p1)
    per_tower("relu1", "relu", own("conv1"))
    per_tower("norm1", "lrn", own("relu1"), groups=g, **lrn_kw)
    per_tower("pool1", "maxpool", own("norm1"), size=psize, stride=pstride)
    per_tower("conv2", "conv", own("pool1"), out=w2, kernel=conv2_kernel, padding=conv2_kernel // 2, groups=g)
    per_tower("relu2", "relu", own("conv2"))
    per_tower("norm2", "lrn", own("relu2"), groups=g, **lrn_kw)
    per_tower("pool2", "maxpool", own("norm2"), size=psize, stride=pstride)
    per_tower("conv3", "conv", both("pool2"), out=w3, kernel=3, padding=1)
    per_tower("relu3", "relu", own("conv3"))
    per_tower("conv4", "conv", own("relu3"), out=w4, kernel=3, padding=1, groups=g)
    per_tower("relu4", "relu", own("conv4"))
    per_tower("conv5", "conv", own("relu4"), out=w5, kernel=3, padding=1, groups=g)
    per_tower("relu5", "relu", own("conv5"))
    per_tower("pool5", "maxpool", own("relu5"), size=psize, stride=pstride)
    last = "pool5"
    if extra_conv:
        per_tower("conv6", "conv", own("pool5"), out=w5, kernel=3, padding=1, groups=g)
        per_tower("relu6c", "relu", own("conv6"))
        last = "relu6c"
    per_tower("fc6", "linear", both(last), out=f6)
    per_tower("relu6", "relu", own("fc6"))
    last = "relu6"
    if dropout:
        per_tower("drop6", "dropout", own("relu6"), p=dropout)
        last = "drop6"
    per_tower("fc7", "linear", both(last), out=f7)
    per_tower("relu7", "relu", own("fc7"))
    last = "relu7"
    if dropout:
        per_tower("drop7", "dropout", own("relu7"), p=dropout)
        last = "drop7"
    specs.append({"name": "fc8", "type": "linear", "inputs": both(last)(0), "tower": 0, "group": "fc8",
                  "out_features": num_classes, "rows": [0, num_classes], "weight_std": weight_std,
                  "bias_init": 0.0})
    specs.append({"name": "loss", "type": "softmax_loss", "inputs": ["fc8"], "tower": 0})
    return specs


def alexnet(towers=2, devices=None, num_classes=1000, input_size=224, width=1.0, extra_conv=False, half=False,
            seed=0, dropout=0.5, weight_std=0.01, parallel=None):
    """The paper's AlexNet. towers=2: two towers on two logical devices (crossover at conv3, fc6,
    fc7, fc8); towers=1: the same function on one device with groups=2 in conv2/4/5 (and LRN).
    half=True: the paper's one-GPU net with half the kernels (towers must be 1). width scales
    every conv and FC layer (for tests and small runs); input_size other than 224 changes the
    spatial sizes (and fc6's input) accordingly. weight_std: the initial weights' standard
    deviation (paper: 0.01)."""
    width = number(width, "alexnet: width", error=ValueError)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"alexnet: width must be finite and > 0, got {width}")
    # (towers="2" was refused as "must be 1 or 2, got 2", towers=2.0 as conv1_a's width 4.0; half="yes"
    # was True and extra_conv="no" built conv6)
    towers = integer(towers, "alexnet: towers", error=ValueError)
    extra_conv, half = flag(extra_conv, "alexnet: extra_conv"), flag(half, "alexnet: half")
    config = {"model": "alexnet", "towers": towers, "num_classes": num_classes, "input_size": input_size,
              "width": width, "extra_conv": extra_conv, "half": half, "seed": seed, "dropout": dropout,
              "weight_std": weight_std}
    widths = ALEXNET_WIDTHS
    if half:
        if towers != 1:
            raise ValueError("alexnet: half=True is the paper's one-GPU net; use towers=1")
        widths = (48, 128, 192, 192, 256)
    if min(widths) * width < 1:  # _even's floor of 2 made every layer 2 kernels wide, silently
        raise ValueError(f"alexnet: width {width} leaves the narrowest layer ({min(widths)} kernels) less "
                         f"than one kernel")
    widths = tuple(_even(w * width) for w in widths)
    fc = tuple(_even(f * width) for f in ALEXNET_FC)
    specs = tower_specs(towers, num_classes, input_size, widths, fc, dropout=dropout, extra_conv=extra_conv,
                        groups=not half, weight_std=weight_std)
    return Net(specs, devices=devices, seed=seed, parallel=parallel, config=config)


def small_alexnet(num_classes=10, input_size=56, widths=(32, 64, 96, 96, 64), fc=(256, 256), conv1=(5, 2, 2),
                 towers=2, devices=None, seed=0, dropout=0.5, extra_conv=False, weight_std=0.01, parallel=None):
    """AlexNet's structure scaled down to train on a CPU in minutes: the same layers, towers,
    crossovers, LRN and overlapping pooling; conv1 (kernel, stride, pad), the channel widths and
    the FC widths are arguments. At input 56: conv1 5x5/2 -> 28, pool -> 13, pool -> 6, pool5 -> 2."""
    towers = integer(towers, "small_alexnet: towers", error=ValueError)
    extra_conv = flag(extra_conv, "small_alexnet: extra_conv")
    specs = tower_specs(towers, num_classes, input_size, widths, fc, conv1=conv1,  # checks them
                        dropout=dropout, extra_conv=extra_conv, weight_std=weight_std)
    config = {"model": "small_alexnet", "num_classes": num_classes, "input_size": input_size,
              "widths": list(widths), "fc": list(fc), "conv1": list(conv1), "towers": towers, "seed": seed,
              "dropout": dropout, "extra_conv": extra_conv, "weight_std": weight_std}
    return Net(specs, devices=devices, seed=seed, parallel=parallel, config=config)


_MODELS = {"alexnet": alexnet, "small_alexnet": small_alexnet}


def build(config, devices=None, **overrides):
    """Rebuild a net from its `net.config` (optionally on other devices / with other settings)."""
    if not isinstance(config, dict):
        raise ValueError(f"build: config must be a dict (a net's .config), got {type(config).__name__}")
    config = dict(config)
    if "devices" in config:  # was "got multiple values for keyword argument 'devices'"
        raise ValueError("build: a config holds no devices (pass devices=)")
    if "layers" in config:
        if not isinstance(config["layers"], (list, tuple)):  # None was "'NoneType' object is not iterable"
            raise ValueError(f"build: config['layers'] must be a list of layer specs, got {config['layers']!r}")
        unknown = sorted(set(overrides) - {"seed"})
        if unknown:  # they were ignored without a word
            raise ValueError(f"build: a net of layers takes no {unknown} (only seed)")
        config.update(overrides)
        return Net(config["layers"], devices=devices, seed=config.get("seed", 0), config=config)
    name = config.pop("model", None)
    if not isinstance(name, str) or name not in _MODELS:  # a list was "unhashable type: 'list'"
        raise ValueError(f"build: unknown model {name!r} (known: {sorted(_MODELS)})")
    config.update(overrides)
    return _MODELS[name](devices=devices, **config)
