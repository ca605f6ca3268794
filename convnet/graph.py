"""Net: a graph of named layers, described as data, placed on devices.

A net is built from a list of layer specs (dicts: name, type, inputs, tower, settings; see
convnet/layers.py and convnet/models.py). Each spec's `tower` picks one of the net's logical
devices (`devices[tower]`: "cpu:N" or "cuda:N"); logical devices map onto physical ones
(`net.placement()`): every "cpu:N" is the CPU, and "cuda:N" is GPU N modulo the number of
GPUs, so with one GPU both towers share cuda:0. Where a layer reads an output that lives on
another physical device it copies it over (Tensor.to), and the gradient flows back the same way.

With `parallel=True` (the default when the net has several towers and uses a GPU) each
tower's layers run in their own Python thread: the kernels release the GIL and
launch on the CUDA per-thread default stream, so towers overlap even on one GPU. A thread
synchronises its device before handing an output (or gradient) to another thread.

Parameters are addressed in one layout for every variant: the one-device (grouped, PyTorch)
layout, e.g. "conv2.weight" of shape (256, 48, 5, 5). A tower holds a slice of rows (output
channels) of each of its layers' parameters; state_dict() joins them, load_state_dict() splits.
"""
import contextlib
import math
import re
import threading
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from . import _C, ops
from ._checks import cast, flag, integer
from .layers import Dropout, Input, SoftmaxLoss, make_layer

_DEVICE_NAME = re.compile(r"(cpu|cuda)(?::(\d+))?")  # fullmatch: "$" also matches before a final newline


def physical_device(logical):
    """The physical device ("cpu" or "cuda:N") a logical device name runs on."""
    m = _DEVICE_NAME.fullmatch(logical) if isinstance(logical, str) else None
    if m is None:
        raise ValueError(f"unknown device {logical!r}: use 'cpu', 'cpu:N', 'cuda' or 'cuda:N'")
    if m.group(1) == "cpu":
        return "cpu"
    count = _C.cuda_device_count() if _C.cuda_built() else 0
    if count == 0:
        why = "no GPU is visible" if _C.cuda_built() else "convnet was built without CUDA"
        raise RuntimeError(f"device {logical!r} is not available: {why}")  # as tensors and ops say it
    return _C.parse_device(f"cuda:{int(m.group(2) or 0) % count}")


MAX_DEFAULT_TOWERS = 64


def default_devices(towers):
    """One logical device per tower: cuda:0, cuda:1, ... when a GPU is visible, else cpu:0, cpu:1, ..."""
    kind = "cuda" if _C.cuda_built() and _C.cuda_device_count() > 0 else "cpu"
    return [f"{kind}:{i}" for i in range(towers)]


def _dropout_seed(seed, step, index):
    return int(np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def _to_tensor(x, device, what):
    if isinstance(x, _C.Tensor):
        return x.to(device)
    return _C.from_numpy(np.ascontiguousarray(cast(x, np.float32, what)), device)


class Net:
    def __init__(self, layers, devices=None, seed=0, parallel=None, config=None):
        specs = [dict(s) if isinstance(s, dict) else s for s in layers]  # make_layer says what is wrong
        self.layers = [make_layer(s) for s in specs]
        self.seed = integer(seed, "Net: seed", minimum=0)
        self.step = 0  # training forwards so far: with the seed, it picks the dropout masks
        self.config = config if config is not None else {"layers": specs, "seed": self.seed}
        self._check_graph()
        last = max(self.layers, key=lambda layer: layer.tower)
        towers = 1 + last.tower
        if devices is None:
            if towers > MAX_DEFAULT_TOWERS:  # a typo, not a plan: do not build a list of 2**62 names
                raise ValueError(f"layer {last.name!r}: tower {last.tower} asks for {towers} devices; without "
                                 f"devices= a net gets one per tower, at most {MAX_DEFAULT_TOWERS}")
            devices = default_devices(towers)
        if isinstance(devices, str):
            devices = [devices]
        if not isinstance(devices, (list, tuple)) or not all(isinstance(d, str) for d in devices):
            raise TypeError(f"Net: devices must be a device name or a list of them, got {devices!r}")
        devices = list(devices)
        if len(devices) < towers:
            raise ValueError(f"the net has {towers} towers but {len(devices)} devices were given: {devices}")
        self._placement = {}
        for d in devices:
            self._placement[d] = physical_device(d)
        self.devices = devices
        for layer in self.layers:
            if layer.tower < 0:
                raise ValueError(f"layer {layer.name!r}: negative tower {layer.tower}")
            layer.logical = devices[layer.tower]
            layer.device = self._placement[layer.logical]
        by_name = {layer.name: layer for layer in self.layers}
        for layer in self.layers:
            layer.input_grad = any(not isinstance(by_name[n], Input) for n in layer.inputs)
        if parallel is None:
            parallel = towers > 1 and any(l.device != "cpu" for l in self.layers)
        self.parallel = flag(parallel, "Net: parallel")
        self._infer_shapes()
        for layer in self.layers:
            if layer.has_params:
                layer.make_params(layer.device)
        self._check_param_parts()
        self.init_params(self.seed)
        self._outputs = {}
        self._trained_forward = False
        self._busy = threading.Lock()

    @contextlib.contextmanager
    def _alone(self, what):
        """One forward or backward at a time: they share the saved activations (two threads on one
        net mixed their batches; a backward found another call's max-pool indices gone)."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{what}: this net is running a forward or backward in another thread "
                               "(use a net per thread)")
        try:
            yield
        finally:
            self._busy.release()

    # ---------------------------------------------------------------- structure
    def _check_graph(self):
        by_name = {}
        for layer in self.layers:
            if layer.name in by_name:
                raise ValueError(f"duplicate layer name {layer.name!r}")
            by_name[layer.name] = layer
        self.by_name = by_name
        inputs = [l for l in self.layers if isinstance(l, Input)]
        if len(inputs) != 1:
            raise ValueError(f"a net needs exactly one input layer, got {len(inputs)}")
        self.input_layer = inputs[0]
        for layer in self.layers:
            if isinstance(layer, Input):
                if layer.inputs:
                    raise ValueError(f"input layer {layer.name!r} cannot read other layers")
                continue
            if not layer.inputs:
                raise ValueError(f"layer {layer.name!r} reads no input")
            for name in layer.inputs:
                if name not in by_name:
                    raise ValueError(f"layer {layer.name!r} reads unknown layer {name!r}")
        losses = [l for l in self.layers if isinstance(l, SoftmaxLoss)]
        if len(losses) > 1:
            raise ValueError("a net can have at most one loss layer")
        self.loss_layer = losses[0] if losses else None
        # Topological order (Kahn), stable in spec order; what is left over lies on a cycle.
        readers = defaultdict(list)
        pending = {}
        for layer in self.layers:
            pending[layer.name] = len(layer.inputs)
            for name in layer.inputs:
                readers[name].append(layer.name)
        ready = [l.name for l in self.layers if pending[l.name] == 0]
        order = []
        while ready:
            name = ready.pop(0)
            order.append(by_name[name])
            for r in readers[name]:
                pending[r] -= 1
                if pending[r] == 0:
                    ready.append(r)
        if len(order) != len(self.layers):
            stuck = [l.name for l in self.layers if l not in order]
            raise ValueError(f"the layer graph has a cycle through {stuck}")
        self.order = order
        self.readers = {name: [by_name[r] for r in rs] for name, rs in readers.items()}
        if self.loss_layer is not None and self.readers.get(self.loss_layer.name):
            raise ValueError(f"loss layer {self.loss_layer.name!r} cannot be read by other layers")
        if self.loss_layer is not None:
            if len(self.loss_layer.inputs) != 1:
                raise ValueError(f"loss layer {self.loss_layer.name!r} reads one layer (the logits)")
            self.output_layer = by_name[self.loss_layer.inputs[0]]
        else:
            self.output_layer = order[-1]

    def _infer_shapes(self):
        for layer in self.order:
            if isinstance(layer, Input):
                continue
            layer.out_shape([self.by_name[n].shape for n in layer.inputs])

    def _check_param_parts(self):
        """Each one-device parameter must be covered exactly once by its parts' rows."""
        parts = defaultdict(list)
        for layer in self.layers:
            for p in layer.params.values():
                parts[p.key].append(p)
        self._param_order = []
        for layer in self.order:
            for p in layer.params.values():
                if p.key not in self._param_order:
                    self._param_order.append(p.key)
        self._parts = {}
        for key in self._param_order:
            ps = sorted(parts[key], key=lambda p: p.rows[0])
            stop = 0
            for p in ps:
                if p.rows[0] != stop or p.shape[1:] != ps[0].shape[1:] or p.full_rows != ps[0].full_rows:
                    raise ValueError(f"the parts of {key} do not tile it: {ps}")
                stop = p.rows[1]
            if stop != ps[0].full_rows:
                raise ValueError(f"the parts of {key} cover {stop} of {ps[0].full_rows} rows: {ps}")
            self._parts[key] = ps

    # ---------------------------------------------------------------- parameters
    def params(self):
        """Every Param of the net (each tower part separately), in order."""
        return [p for key in self._param_order for p in self._parts[key]]

    def shapes(self):
        """Parameter shapes in the one-device layout: key -> shape."""
        return {key: ps[0].full_shape for key, ps in self._parts.items()}

    def num_params(self):
        return sum(math.prod(s) for s in self.shapes().values())

    def forward_macs(self, by_layer=False):
        """Multiply-adds of one image's forward pass in the conv and FC layers (a training step
        is about three times this: forward, backward-data, backward-weights); by_layer=True: a
        dict of them per layer, the towers' parts together ({"conv1": ..., "fc8": ...})."""
        macs = {}
        for layer in self.layers:
            if layer.type == "conv":
                m = math.prod(layer.shape) * (layer.in_channels // layer.groups) * layer.kernel ** 2
            elif layer.type == "linear":
                m = layer.in_features * layer.out_features
            else:
                continue
            macs[layer.group] = macs.get(layer.group, 0) + m
        return macs if by_layer else sum(macs.values())

    def init_params(self, seed):
        """The paper's initialisation, drawn in the one-device layout (so every placement gets the
        same weights): weights N(0, std) (std 0.01 unless a spec says otherwise), biases from the
        spec's bias_init (1 for conv2, conv4, conv5, fc6, fc7 in AlexNet, else 0)."""
        rng = np.random.default_rng(seed)
        state = {}
        for key in self._param_order:
            layer = next(l for l in self.layers if any(p.key == key for p in l.params.values()))
            shape = self._parts[key][0].full_shape
            if key.endswith(".weight"):
                state[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(layer.weight_std)
            else:
                state[key] = np.full(shape, layer.bias_init, np.float32)
        self.load_state_dict(state)

    def _join(self, attr):
        out = {}
        for key, ps in self._parts.items():
            arrays = []
            for p in ps:
                t = getattr(p, attr)
                if t is None:
                    raise RuntimeError(f"{key} has no {attr} yet: run a training forward and backward first")
                arrays.append(t.numpy())
            out[key] = arrays[0].copy() if len(arrays) == 1 else np.concatenate(arrays, 0)
        return out

    def state_dict(self):
        """Parameters as NumPy arrays in the one-device layout: {"conv1.weight": (96, 3, 11, 11), ...}."""
        return self._join("data")

    def grad_dict(self):
        """Gradients of the last backward, in the same layout as state_dict()."""
        return self._join("grad")

    def momentum_dict(self):
        return self._join("momentum")

    def check_state(self, state, what="load_state_dict"):
        """Raise ValueError naming the keys or shapes that differ from this net's parameters."""
        if not isinstance(state, Mapping):
            raise TypeError(f"{what}: expected a dict of arrays like state_dict()'s, got {type(state).__name__}")
        want = self.shapes()
        missing = [k for k in want if k not in state]
        extra = [k for k in state if k not in want]
        if missing or extra:
            raise ValueError(f"{what}: missing keys {missing}, unexpected keys {extra}")
        for k, shape in want.items():
            got = tuple(np.shape(state[k]))
            if got != shape:
                raise ValueError(f"{what}: {k} has shape {got} but this net's {k} is {shape}")

    def checked_state(self, state, what):
        """state's arrays as float32, every one checked before any is used (so that a load that
        fails changes nothing: it once stopped at the 16th array, 15 already overwritten)."""
        self.check_state(state, what)
        arrays = {}
        for key in self._parts:
            a = state[key]
            a = a.numpy() if isinstance(a, _C.Tensor) else np.asarray(a)
            if a.dtype.kind != "f":
                raise TypeError(f"{what}: {key} has dtype {a.dtype}, expected float32")
            arrays[key] = cast(a, np.float32, f"{what}: {key}")
        return arrays

    def _split_into(self, state, attr, what):
        for key, a in self.checked_state(state, what).items():
            for p in self._parts[key]:
                getattr(p, attr).copy_(_C.from_numpy(np.ascontiguousarray(a[p.rows[0]:p.rows[1]]), p.data.device))

    def load_state_dict(self, state):
        self._split_into(state, "data", "load_state_dict")

    def load_momentum_dict(self, state):
        self._split_into(state, "momentum", "load_momentum")

    # ---------------------------------------------------------------- running
    def placement(self):
        """Logical device -> physical device."""
        return dict(self._placement)

    def _workers(self, layers):
        """The layers each thread runs, in order: one list per tower, or one in all."""
        if not self.parallel:
            return [layers]
        groups = defaultdict(list)
        for layer in layers:
            groups[layer.tower].append(layer)
        return list(groups.values())

    def _run(self, layers, work, deps, dependents):
        """Run work(layer) for each layer in order, in one thread per tower when parallel.
        deps(layer): layers that must finish first; dependents(layer): layers that wait on it."""
        workers = self._workers(layers)
        if len(workers) == 1:
            for layer in workers[0]:
                work(layer)
            return
        owner = {layer.name: i for i, w in enumerate(workers) for layer in w}
        done = {layer.name: threading.Event() for layer in layers}
        failed = []
        for dev in {l.device for l in layers if l.device != "cpu"}:
            _C.synchronize(dev)  # this thread's queued work (inputs, updates) before the workers read it

        def run(i, todo):
            try:
                for layer in todo:
                    for d in deps(layer):
                        if d.name in done:
                            done[d.name].wait()
                    if failed:
                        return
                    work(layer)
                    if layer.device != "cpu" and any(owner.get(d.name, i) != i for d in dependents(layer)):
                        _C.synchronize(layer.device)  # hand over to another thread
                    done[layer.name].set()
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                failed.append(e)
                for ev in done.values():
                    ev.set()
            finally:
                for dev in {l.device for l in todo if l.device != "cpu"}:
                    _C.synchronize(dev)

        threads = [threading.Thread(target=run, args=(i, w), name=f"convnet-tower{w[0].tower}")
                   for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[0]

    def _check_images(self, images):
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1:] != tuple(self.input_layer.shape):
            c, h, w = self.input_layer.shape
            raise ValueError(f"Net.forward: images of shape {shape}; this net takes (N, {c}, {h}, {w})")
        if shape[0] == 0:
            raise ValueError("Net.forward: empty batch")

    def forward(self, images, labels=None, train=False, step=None):
        """The logits (a convnet.Tensor (N, classes) on the output layer's device) for a batch of
        images (convnet.Tensor or NumPy float32, NCHW); with labels, (logits, mean loss).
        train=True applies dropout (masks from the net's seed and `step`, by default the count of
        training forwards so far) and keeps what backward() needs."""
        with self._alone("Net.forward"):
            return self._forward(images, labels, train, step)

    def _forward(self, images, labels, train, step):
        # until this forward completes, backward() has nothing to work from: after one that failed
        # half-way it mixed this batch's saved activations with the last batch's softmax and labels
        self._trained_forward = False
        train = flag(train, "Net.forward: train")
        # Tensors float32, arrays any float width: integer arrays were rounded (2**40 + 1
        # silently), complex ones lost their imaginary part
        if isinstance(images, _C.Tensor):
            floats = images.dtype == "float32"
        else:
            images = np.asarray(images)  # lists had no .shape
            floats = images.dtype.kind == "f"
        if not floats:
            raise TypeError(f"Net.forward: images must be float32, got {images.dtype}")
        self._check_images(images)
        first = self.readers.get(self.input_layer.name, [self.output_layer])[0]
        self._outputs = {self.input_layer.name: _to_tensor(images, first.device, "Net.forward: images")}
        with_loss = labels is not None
        if with_loss and self.loss_layer is None:
            raise ValueError("Net.forward: labels given but the net has no loss layer")
        if with_loss:
            labels = np.asarray(labels.numpy() if isinstance(labels, _C.Tensor) else labels)
            if labels.shape != (images.shape[0],):
                raise ValueError(f"Net.forward: labels of shape {labels.shape} for {images.shape[0]} images")
            if labels.dtype.kind not in "iu":
                raise TypeError(f"Net.forward: labels must be integers, got {labels.dtype}")
            labels = cast(labels, np.int32, "Net.forward: labels")
            labels = _C.from_numpy(np.ascontiguousarray(labels), self.loss_layer.device)
        if train:
            step = self.step if step is None else integer(step, "Net.forward: step", minimum=0)
            for i, layer in enumerate(self.layers):
                if isinstance(layer, Dropout):
                    layer.seed = _dropout_seed(self.seed, step, i)
        todo = [l for l in self.order if not isinstance(l, Input) and (with_loss or l is not self.loss_layer)]
        outputs = self._outputs

        def work(layer):
            xs = [outputs[n].to(layer.device) for n in layer.inputs]
            if layer is self.loss_layer:
                outputs[layer.name] = layer.forward(xs, train, labels=labels)
            else:
                outputs[layer.name] = layer.forward(xs, train)

        self._run(todo, work, deps=lambda l: [self.by_name[n] for n in l.inputs],
                  dependents=lambda l: self.readers.get(l.name, []))
        self._trained_forward = train and with_loss
        if not self._trained_forward:
            for layer in self.layers:
                layer.clear()  # nothing will call backward: let go of what it would need
        if train:
            self.step = step + 1
        logits = outputs[self.output_layer.name]
        if with_loss:
            return logits, outputs[self.loss_layer.name]
        return logits

    def backward(self):
        """Gradients of the last training forward's loss: fills every Param's .grad."""
        with self._alone("Net.backward"):
            self._backward()

    def _backward(self):
        if not self._trained_forward:
            raise RuntimeError("Net.backward: needs a forward with labels and train=True first")
        self._trained_forward = False
        todo = [l for l in reversed(self.order) if not isinstance(l, Input)]
        contributions = {}  # (reader name, input index) -> gradient on the reader's device

        def work(layer):
            if layer is self.loss_layer:
                dy = None
            else:
                parts = [contributions.pop((r.name, i)) for r in self.readers.get(layer.name, [])
                         for i, n in enumerate(r.inputs) if n == layer.name]
                parts = [g for g in parts if g is not None]
                if not parts:
                    raise RuntimeError(f"Net.backward: no gradient reaches layer {layer.name!r}")
                dy = parts[0].to(layer.device)
                if len(parts) > 1:
                    if dy is parts[0]:
                        dy = dy.clone()  # never add into a tensor another layer may still hold
                    for g in parts[1:]:
                        ops.add_(dy, g.to(layer.device))
            grads = layer.backward(dy)
            for i, (name, g) in enumerate(zip(layer.inputs, grads)):
                if isinstance(self.by_name[name], Input):
                    g = None  # nobody needs the gradient of the images
                contributions[(layer.name, i)] = g

        self._run(todo, work, deps=lambda l: self.readers.get(l.name, []),
                  dependents=lambda l: [self.by_name[n] for n in l.inputs])
        for layer in self.layers:
            layer.clear()

    def features(self, images, layer="fc7"):
        """The activations of a layer (NumPy, (N, ...)) for the images, at test time. A layer split
        across towers (e.g. fc7_a and fc7_b, group "fc7") is joined along the channel axis."""
        parts = [l for l in self.order if l.name == layer]
        if not parts:
            parts = sorted((l for l in self.order if l.group == layer),
                           key=lambda l: int(l.spec.get("rows", (0, 0))[0]) if "rows" in l.spec else l.tower)
        if not parts:
            raise ValueError(f"Net.features: no layer {layer!r} (layers: {[l.name for l in self.order]})")
        if self.loss_layer in parts:
            raise ValueError(f"Net.features: {layer!r} is the loss, which needs labels: use forward(images, labels)")
        # the outputs are read under the same hold as the forward: another thread's forward in
        # between replaced them (KeyError, or that thread's batch)
        with self._alone("Net.features"):
            self._forward(images, None, False, None)
            arrays = [self._outputs[l.name].numpy() for l in parts]
        return arrays[0].copy() if len(arrays) == 1 else np.concatenate(arrays, 1)

    # ---------------------------------------------------------------- printing
    def summary(self):
        rows = [("layer", "type", "reads", "device", "output", "params")]
        for layer in self.order:
            dev = f"{layer.logical}->{layer.device}" if layer.logical != layer.device else layer.device
            rows.append((layer.name, layer.describe(), ",".join(layer.inputs) or "-", dev,
                         "x".join(str(s) for s in layer.shape) or "scalar",
                         f"{layer.num_params():,}" if layer.num_params() else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"{self.num_params():,} parameters; placement "
                     + ", ".join(f"{k}->{v}" for k, v in self._placement.items())
                     + ("; towers in parallel threads" if self.parallel else ""))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return f"<Net {len(self.layers)} layers, {self.num_params():,} parameters on {self.devices}>"
