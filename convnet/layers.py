"""Layers of the graph (convnet/graph.py): each wraps the kernels of convnet.ops.

A layer has a name, the names of the layers it reads (`inputs`), its parameters (`params`:
name -> Param), and the physical device it runs on (`device`, set by the Net). When a layer
reads several inputs they are joined along the channel axis (axis 1) first: that is how a
crossover layer (conv3, fc6, fc7, fc8) sees the maps of both towers.

forward(xs, train) takes the input tensors (already on this layer's device) and returns the
output; backward(dy) takes the output gradient and returns one input gradient per input (None
for inputs that need none) and fills each param's .grad. Per-sample shapes (no batch axis)
are inferred by out_shape(in_shapes) so the net can be checked and printed without running.
"""
import math

from . import ops
from . import _C
from ._checks import integer, number


def _int_setting(spec, key, minimum, default=None):
    """An integer setting of a layer spec, at least `minimum` (KeyError when missing without a
    default). int() took 1.5 or "3", and a stride or groups of 0 surfaced as a bare
    ZeroDivisionError while the net was being built."""
    v = spec[key] if default is None else spec.get(key, default)
    return integer(v, f"layer {spec['name']!r}: {key}", minimum, error=ValueError)


def _number_setting(spec, key, default):
    """A real-number setting of a layer spec (float() took "0.5" and True)."""
    return number(spec.get(key, default), f"layer {spec['name']!r}: {key}", error=ValueError)


def _init_settings(layer, spec):
    layer.weight_std = _number_setting(spec, "weight_std", 0.01)
    layer.bias_init = _number_setting(spec, "bias_init", 0.0)
    if not (math.isfinite(layer.weight_std) and layer.weight_std >= 0 and math.isfinite(layer.bias_init)):
        raise ValueError(f"layer {layer.name!r}: weight_std must be finite and >= 0 and bias_init finite, got "
                         f"{layer.weight_std} and {layer.bias_init}")


class Param:
    """A learned tensor with its gradient and its momentum buffer (both on the same device).

    `key` names it in the one-device layout (e.g. "conv2.weight"); `rows` is the slice of
    that tensor's first (output) axis this part holds: a tower holds half the kernels."""

    def __init__(self, key, shape, rows, full_rows, device):
        self.key = key
        self.shape = tuple(shape)
        self.rows = rows  # (start, stop) along axis 0 of the full tensor
        self.full_rows = full_rows
        self.data = _C.zeros(list(shape), "float32", device)
        self.momentum = _C.zeros(list(shape), "float32", device)
        self.grad = None

    @property
    def full_shape(self):
        return (self.full_rows,) + self.shape[1:]

    def __repr__(self):
        return f"Param({self.key}[{self.rows[0]}:{self.rows[1]}], shape={self.shape})"


class Layer:
    type = None
    has_params = False
    multi_input = False  # whether several inputs (joined along axis 1) are allowed

    def __init__(self, spec):
        self.spec = dict(spec)
        self.name = spec["name"]  # a non-empty string: make_layer checked
        inputs = spec.get("inputs", [])
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(n, str) for n in inputs):
            raise ValueError(f"layer {self.name!r}: inputs must be a list of layer names, got {inputs!r}")
        self.inputs = list(inputs)
        self.tower = _int_setting(spec, "tower", 0, default=0)
        # The layer in the one-device net this one is part of (conv1_a and conv1_b: "conv1"); it
        # names the parameters ("conv1.weight").
        self.group = spec.get("group", self.name)
        if not isinstance(self.group, str) or not self.group:
            raise ValueError(f"layer {self.name!r}: group must be a non-empty string, got {self.group!r}")
        self.params = {}
        self.device = None    # physical device, set by the Net
        self.input_grad = True  # False when the Net needs no gradient for the inputs (they are images)
        self.logical = None   # logical device name, set by the Net
        self.in_shapes = None
        self.shape = None     # per-sample output shape
        self._split = None    # channel counts of the joined inputs

    # -- shapes --
    def out_shape(self, in_shapes):
        """The per-sample output shape for these per-sample input shapes (checks them)."""
        if len(in_shapes) > 1:
            if not self.multi_input:
                raise ValueError(f"layer {self.name!r} ({self.type}) takes one input, got {len(in_shapes)}")
            first = in_shapes[0]
            for s in in_shapes[1:]:
                if len(s) != len(first) or tuple(s[1:]) != tuple(first[1:]):
                    raise ValueError(f"layer {self.name!r}: inputs {self.inputs} have shapes {in_shapes} "
                                     "that differ outside the channel axis")
            joined = (sum(s[0] for s in in_shapes),) + tuple(first[1:])
        else:
            joined = tuple(in_shapes[0])
        self._split = [s[0] for s in in_shapes]
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.shape = tuple(self._shape(joined))
        return self.shape

    def _shape(self, s):
        return s

    def make_params(self, device):
        pass

    def num_params(self):
        return sum(math.prod(p.shape) for p in self.params.values())

    # -- compute --
    def forward(self, xs, train):
        x = xs[0] if len(xs) == 1 else ops.concat(xs, 1)
        return self._forward(x, train)

    def backward(self, dy):
        dx = self._backward(dy)
        if dx is None:
            return [None] * len(self.inputs)
        if len(self._split) == 1:
            return [dx]
        return ops.split(dx, self._split, 1)

    def clear(self):
        """Drop what forward kept for backward."""
        for k in [k for k in vars(self) if k.startswith("_saved")]:
            setattr(self, k, None)

    def describe(self):
        return self.type


class Input(Layer):
    """The images: a source with a fixed per-sample shape (C, H, W)."""
    type = "input"

    def __init__(self, spec):
        super().__init__(spec)
        shape = spec["shape"]
        try:
            if isinstance(shape, str):
                raise TypeError
            self.shape = tuple(integer(d, "shape", minimum=1) for d in shape)
        except (TypeError, ValueError):
            self.shape = ()
        if not self.shape:
            raise ValueError(f"layer {self.name!r}: shape must be a list of integers >= 1, got {shape!r}")


def _param_spec(layer, out):
    """(key prefix, first row, full rows) of this layer's part of the one-device parameters: its
    `rows` [start, full] (default [0, out]) say that it holds rows start .. start + out of a
    tensor of `full` rows."""
    rows = layer.spec.get("rows", (0, out))
    if not isinstance(rows, (list, tuple)) or len(rows) != 2:
        raise ValueError(f"layer {layer.name!r}: rows must be a pair [start, full rows], got {rows!r}")
    start = integer(rows[0], f"layer {layer.name!r}: rows[0]", 0, error=ValueError)
    full = integer(rows[1], f"layer {layer.name!r}: rows[1]", 1, error=ValueError)
    if start + out > full:
        raise ValueError(f"layer {layer.name!r}: rows {start} .. {start + out} do not fit in {full} rows")
    return layer.group, start, full


class Conv(Layer):
    type = "conv"
    has_params = True
    multi_input = True

    def __init__(self, spec):
        super().__init__(spec)
        self.out_channels = _int_setting(spec, "out_channels", 1)
        self.kernel = _int_setting(spec, "kernel", 1)
        self.stride = _int_setting(spec, "stride", 1, default=1)
        self.padding = _int_setting(spec, "padding", 0, default=0)
        self.groups = _int_setting(spec, "groups", 1, default=1)
        _init_settings(self, spec)

    def _shape(self, s):
        if len(s) != 3:
            raise ValueError(f"layer {self.name!r} (conv) needs (C, H, W) input, got {s}")
        c, h, w = s
        if c % self.groups or self.out_channels % self.groups:
            raise ValueError(f"layer {self.name!r}: {c} input and {self.out_channels} output channels "
                             f"do not divide into {self.groups} groups")
        oh = (h + 2 * self.padding - self.kernel) // self.stride + 1
        ow = (w + 2 * self.padding - self.kernel) // self.stride + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"layer {self.name!r}: {self.kernel}x{self.kernel} kernel does not fit a {h}x{w} input")
        self.in_channels = c
        return (self.out_channels, oh, ow)

    def make_params(self, device):
        key, start, full = _param_spec(self, self.out_channels)
        rows = (start, start + self.out_channels)
        self.params = {
            "weight": Param(f"{key}.weight", (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel),
                            rows, full, device),
            "bias": Param(f"{key}.bias", (self.out_channels,), rows, full, device)}

    def _forward(self, x, train):
        self._saved_x = x
        return ops.conv2d(x, self.params["weight"].data, self.params["bias"].data, self.stride, self.padding,
                          self.groups)

    def _backward(self, dy):
        dx, dw, db = ops.conv2d_backward(self._saved_x, self.params["weight"].data, dy, self.stride, self.padding,
                                         self.groups, input_grad=self.input_grad)
        self.params["weight"].grad = dw
        self.params["bias"].grad = db
        return dx

    def describe(self):
        g = f" groups {self.groups}" if self.groups > 1 else ""
        return f"conv {self.kernel}x{self.kernel}/{self.stride} pad {self.padding}{g}"


class Linear(Layer):
    """Fully connected; flattens its (joined) input to (N, features) first."""
    type = "linear"
    has_params = True
    multi_input = True

    def __init__(self, spec):
        super().__init__(spec)
        self.out_features = _int_setting(spec, "out_features", 1)
        _init_settings(self, spec)

    def _shape(self, s):
        self.in_features = math.prod(s)
        return (self.out_features,)

    def make_params(self, device):
        key, start, full = _param_spec(self, self.out_features)
        rows = (start, start + self.out_features)
        self.params = {"weight": Param(f"{key}.weight", (self.out_features, self.in_features), rows, full, device),
                       "bias": Param(f"{key}.bias", (self.out_features,), rows, full, device)}

    def _forward(self, x, train):
        self._saved_shape = x.shape
        x = x.reshape([x.shape[0], -1])
        self._saved_x = x
        return ops.linear(x, self.params["weight"].data, self.params["bias"].data)

    def _backward(self, dy):
        dx, dw, db = ops.linear_backward(self._saved_x, self.params["weight"].data, dy)
        self.params["weight"].grad = dw
        self.params["bias"].grad = db
        return dx.reshape(list(self._saved_shape))

    def describe(self):
        return "fc"


class ReLU(Layer):
    type = "relu"

    def _forward(self, x, train):
        self._saved_y = ops.relu(x)
        return self._saved_y

    def _backward(self, dy):
        return ops.relu_backward(self._saved_y, dy)


class LRN(Layer):
    """The paper's local response normalisation across channels. With groups > 1 each group of
    channels is normalised on its own, so a one-device grouped net computes what two towers
    compute (each tower normalises only its own maps)."""
    type = "lrn"

    def __init__(self, spec):
        super().__init__(spec)
        self.size = _int_setting(spec, "size", 1, default=5)
        self.alpha = _number_setting(spec, "alpha", 1e-4)
        self.beta = _number_setting(spec, "beta", 0.75)
        self.k = _number_setting(spec, "k", 2.0)
        self.groups = _int_setting(spec, "groups", 1, default=1)
        try:  # the op's own rules (csrc/ops/lrn.cpp), now rather than at the first forward
            _C.lrn_check_settings(self.size, self.alpha, self.beta, self.k)
        except ValueError as e:
            raise ValueError(f"layer {self.name!r}: {e}") from None

    def _shape(self, s):
        if len(s) != 3 or s[0] % self.groups:
            raise ValueError(f"layer {self.name!r} (lrn) needs (C, H, W) input with C divisible by {self.groups}, got {s}")
        return s

    def _args(self):
        return self.size, self.alpha, self.beta, self.k

    # With groups, the window stays inside each group of channels (a tower's). An image's groups
    # are consecutive blocks of channels, so (N, C, H, W) viewed as (N * groups, C / groups, H, W)
    # is the same memory with each group its own image: one call, no copies (a split into groups
    # and a concat back cost the one-device AlexNet step ~8% on an H200).
    def _grouped(self, t):
        if self.groups == 1:
            return t
        n, c, h, w = t.shape  # 4-d, c divisible by groups: checked by _shape when the net was built
        return t.reshape([n * self.groups, c // self.groups, h, w])

    def _forward(self, x, train):
        xg = self._grouped(x)
        y = ops.lrn(xg, *self._args())
        self._saved_x, self._saved_y = xg, y
        return y.reshape(list(x.shape))

    def _backward(self, dy):
        dx = ops.lrn_backward(self._saved_x, self._saved_y, self._grouped(dy), *self._args())
        return dx.reshape(list(dy.shape))

    def describe(self):
        g = f" groups {self.groups}" if self.groups > 1 else ""
        return f"lrn n={self.size}{g}"


class MaxPool(Layer):
    type = "maxpool"

    def __init__(self, spec):
        super().__init__(spec)
        self.size = _int_setting(spec, "size", 1, default=3)
        self.stride = _int_setting(spec, "stride", 1, default=2)

    def _shape(self, s):
        if len(s) != 3 or s[1] < self.size or s[2] < self.size:
            raise ValueError(f"layer {self.name!r} (maxpool {self.size}) needs a (C, H, W) input of at least "
                             f"{self.size}x{self.size}, got {s}")
        return (s[0], (s[1] - self.size) // self.stride + 1, (s[2] - self.size) // self.stride + 1)

    def _forward(self, x, train):
        # Training keeps each window's argmax (int32, a quarter of x): the backward then only
        # scatters dy. x is kept for its shape (the layer before holds it anyway); y is not kept.
        if not train:
            self._saved_x = self._saved_indices = None
            return ops.max_pool(x, self.size, self.stride)
        y, self._saved_indices = ops.max_pool(x, self.size, self.stride, return_indices=True)
        self._saved_x = x
        return y

    def _backward(self, dy):
        return ops.max_pool_backward(self._saved_x, None, dy, self.size, self.stride, indices=self._saved_indices)

    def describe(self):
        return f"maxpool {self.size}/{self.stride}"


class Dropout(Layer):
    """Dropout with probability p while training (scaled by 1/(1-p), so identity at test time).
    The Net sets `seed` before each training forward (derived from the net's seed and step)."""
    type = "dropout"

    def __init__(self, spec):
        super().__init__(spec)
        self.p = _number_setting(spec, "p", 0.5)
        if not 0.0 <= self.p <= _C.max_drop_probability:  # ops.dropout's range (its draws have 24 bits)
            raise ValueError(f"layer {self.name!r}: dropout p must be in [0, 1 - 2^-24], got {self.p}")
        self.seed = 0

    def _forward(self, x, train):
        self._saved_mask = None
        if not train or self.p == 0.0:
            return x
        y, self._saved_mask = ops.dropout(x, self.p, self.seed)
        return y

    def _backward(self, dy):
        if self._saved_mask is None:
            return dy
        return ops.dropout_backward(dy, self._saved_mask, self.p)

    def describe(self):
        return f"dropout {self.p:g}"


class Flatten(Layer):
    type = "flatten"
    multi_input = True

    def _shape(self, s):
        return (math.prod(s),)

    def _forward(self, x, train):
        self._saved_shape = x.shape
        return x.reshape([x.shape[0], -1])

    def _backward(self, dy):
        return dy.reshape(list(self._saved_shape))


class Concat(Layer):
    """Joins its inputs along the channel axis (every layer can do this itself; this one only joins)."""
    type = "concat"
    multi_input = True

    def _forward(self, x, train):
        return x

    def _backward(self, dy):
        return dy


class SoftmaxLoss(Layer):
    """Softmax over the classes with the mean cross-entropy loss. Its output is the loss (a float);
    `labels` (int32, on this layer's device) is set by the Net before forward."""
    type = "softmax_loss"

    def _shape(self, s):
        if len(s) != 1:
            raise ValueError(f"layer {self.name!r} (softmax_loss) needs (classes,) input, got {s}")
        return ()

    def forward(self, xs, train, labels=None):
        x = xs[0] if len(xs) == 1 else ops.concat(xs, 1)
        loss, probs = ops.softmax_cross_entropy(x, labels)
        self._saved_probs, self._saved_labels = probs, labels
        return loss

    def _backward(self, dy):
        return ops.softmax_cross_entropy_backward(self._saved_probs, self._saved_labels)

    def describe(self):
        return "softmax + cross-entropy"


LAYER_TYPES = {cls.type: cls for cls in (Input, Conv, Linear, ReLU, LRN, MaxPool, Dropout, Flatten, Concat,
                                          SoftmaxLoss)}
LAYER_TYPES["fc"] = Linear


def make_layer(spec):
    if not isinstance(spec, dict):
        raise TypeError(f"a layer spec is a dict, got {type(spec).__name__}")
    for key in ("name", "type"):
        if key not in spec:
            raise ValueError(f"layer spec {spec!r} has no {key!r}")
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise ValueError(f"layer spec {spec!r}: name must be a non-empty string")
    if not isinstance(spec["type"], str) or spec["type"] not in LAYER_TYPES:
        raise ValueError(f"layer {spec['name']!r}: unknown type {spec['type']!r} "
                         f"(known: {', '.join(sorted(LAYER_TYPES))})")
    try:
        return LAYER_TYPES[spec["type"]](spec)
    except KeyError as e:
        raise ValueError(f"layer {spec['name']!r} ({spec['type']}) needs the setting {e.args[0]!r}") from None


__all__ = ["Param", "Layer", "make_layer", "LAYER_TYPES"] + [c.__name__ for c in set(LAYER_TYPES.values())]
