"""The two twins agree: each op on random shapes, run on CUDA and on its CPU twin, the results
compared -- bit for bit where both twins promise it (ReLU, dropout's masks, max-pool with its
indices and gradients), to float rounding elsewhere (the order of sums differs; conv3-5 shapes
take Winograd on CUDA). Runs where a CUDA device is visible: a GPU, or the CUDA emulator
(tools/emulate_cuda.sh), where a fuzz of this kind found the LRN's lost digits (test_lrn.py's
underflow cases)."""
import numpy as np
import pytest

import convnet
from convnet import ops

pytestmark = pytest.mark.skipif(not convnet.cuda_available(), reason="CUDA: no GPU visible or no CUDA build")
CASES = 25


def _both(fn, *args):
    """fn on the CPU and on cuda:0 (array arguments become tensors there); each result as a list
    of NumPy arrays."""
    out = []
    for device in ("cpu", "cuda:0"):
        r = fn(*[convnet.tensor(a, device) if isinstance(a, np.ndarray) else a for a in args])
        out.append([np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in (r if isinstance(r, tuple) else (r,))])
    return out


def _agree(what, cpu, cuda, rel=None):
    """Equal bit for bit (rel None), else within rel of each output's largest magnitude."""
    for k, (a, b) in enumerate(zip(cpu, cuda)):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, k)
        if rel is None:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (what, k)
        else:
            scale = float(np.abs(a).max()) if a.size else 0.0
            assert np.allclose(a, b, rtol=0, atol=rel * max(scale, 1e-30)), (what, k, float(np.abs(a - b).max()), scale)


def _image(rng, channels=None, side_max=30):
    """A random NCHW batch: 1-3 images, `channels` (else 1-19) channels, sides below side_max."""
    shape = (int(rng.integers(1, 4)), channels or int(rng.integers(1, 20)), int(rng.integers(1, side_max)),
             int(rng.integers(1, side_max)))
    return rng.standard_normal(shape).astype(np.float32)


def test_cuda_twin_matches_cpu_elementwise(rng):
    for _ in range(CASES):
        x = _image(rng)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        _agree(("relu", x.shape), *_both(ops.relu, x))
        _agree(("relu_backward", x.shape), *_both(ops.relu_backward, np.maximum(x, 0), dy))
        p, seed = float(rng.choice([0.1, 0.5, 0.9])), int(rng.integers(0, 2**62))
        _agree(("dropout", x.shape, p), *_both(lambda v: ops.dropout(v, p, seed), x))
        mask = (rng.random(x.shape) > p).astype(np.uint8)
        _agree(("dropout_backward", x.shape, p), *_both(lambda d, m: ops.dropout_backward(d, m, p), dy, mask), 1e-7)
        n = int(rng.integers(1, 5000))
        w, dw, v = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        results = []
        for device in ("cpu", "cuda:0"):
            tw, tv = convnet.tensor(w, device), convnet.tensor(v, device)
            ops.sgd_update(tw, convnet.tensor(dw, device), tv, 0.01)
            results.append([tw.numpy(), tv.numpy()])
        _agree(("sgd_update", w.shape), *results, 1e-6)


def test_cuda_twin_matches_cpu_max_pool(rng):
    ran = 0
    while ran < CASES:
        x = _image(rng)
        size, stride = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        if size > min(x.shape[2:]):
            continue
        cpu, cuda = _both(lambda v: ops.max_pool(v, size, stride, return_indices=True), x)
        _agree(("max_pool", x.shape, size, stride), cpu, cuda)
        dy = rng.standard_normal(cpu[0].shape).astype(np.float32)
        _agree(("max_pool_backward", x.shape, size, stride),
               *_both(lambda v, y, d: ops.max_pool_backward(v, y, d, size, stride), x, cpu[0], dy))
        ran += 1


def test_cuda_twin_matches_cpu_lrn(rng):
    for _ in range(CASES):
        x = _image(rng) * np.float32(10 ** rng.uniform(-2, 2))
        p = dict(size=int(rng.choice([1, 3, 5, 7, 9, 11])), alpha=float(10 ** rng.uniform(-5, 0)),
                 beta=float(rng.choice([0.75, 0.5, 1.0])), k=float(rng.choice([0.5, 1.0, 2.0])))
        cpu, cuda = _both(lambda v: ops.lrn(v, **p), x)
        _agree(("lrn", x.shape, p), cpu, cuda, 1e-5)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        _agree(("lrn_backward", x.shape, p), *_both(lambda v, y, d: ops.lrn_backward(v, y, d, **p), x, cpu[0], dy), 1e-5)


def test_cuda_twin_matches_cpu_softmax(rng):
    for _ in range(CASES):
        rows, classes = int(rng.integers(1, 40)), int(rng.integers(1, 1200))
        logits = (rng.standard_normal((rows, classes)) * 10 ** rng.uniform(-1, 2)).astype(np.float32)
        labels = rng.integers(0, classes, rows).astype(np.int32)
        cpu, cuda = _both(ops.softmax_cross_entropy, logits, labels)
        _agree(("softmax_cross_entropy", rows, classes), cpu, cuda, 1e-5)
        _agree(("softmax_cross_entropy_backward", rows, classes),
               *_both(ops.softmax_cross_entropy_backward, cpu[1], labels), 1e-5)


def test_cuda_twin_matches_cpu_conv_linear(rng):
    ran = 0
    while ran < CASES:
        groups = int(rng.choice([1, 2]))
        cin, cout = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 8))
        r, s, stride, pad = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(0, 3))
        x = _image(rng, cin, 24)
        if min(x.shape[2] + 2 * pad - r, x.shape[3] + 2 * pad - s) < 0:
            continue
        w = rng.standard_normal((cout, cin // groups, r, s)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        what = ("conv2d", x.shape, w.shape, stride, pad, groups)
        cpu, cuda = _both(lambda v, ww, bb: ops.conv2d(v, ww, bb, stride, pad, groups), x, w, b)
        _agree(what, cpu, cuda, 1e-4)
        dy = rng.standard_normal(cpu[0].shape).astype(np.float32)
        _agree(what, *_both(lambda v, ww, d: ops.conv2d_backward(v, ww, d, stride, pad, groups), x, w, dy), 1e-4)
        m, k, n = int(rng.integers(1, 70)), int(rng.integers(1, 300)), int(rng.integers(1, 200))
        a, wl, bl = (rng.standard_normal(shape).astype(np.float32) for shape in ((m, k), (n, k), (n,)))
        cpu, cuda = _both(ops.linear, a, wl, bl)
        _agree(("linear", m, k, n), cpu, cuda, 1e-4)
        dy = rng.standard_normal(cpu[0].shape).astype(np.float32)
        _agree(("linear_backward", m, k, n), *_both(ops.linear_backward, a, wl, dy), 1e-4)
        ran += 1
