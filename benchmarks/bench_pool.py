"""Overlapping max-pool (3/2) on the AlexNet shapes: 55 -> 27 (after conv1), 27 -> 13 (conv2),
13 -> 6 (conv5). Bytes moved: forward reads x and writes y (+idx: and the int32 indices);
backward reads x, y and dy and writes dx (the argmax is recomputed); backward+idx (the training
path) reads the indices and dy and writes dx. PyTorch's counterparts: max_pool2d (with
return_indices for +idx) and its backward from the saved indices (for both backward rows).
On a GPU the two backward rows, where the CUDA kernel variants differ (CONVNET_POOL_VARIANT,
csrc/cuda/pool.cu), also run under each, as rows "... v0" to "... v2"; the plain rows use the
default variant."""
import numpy as np

import convnet
from convnet import _C, ops

SHAPES = [("55->27", (96, 55, 55)), ("27->13", (256, 27, 27)), ("13->6", (256, 13, 13))]
SIZE, STRIDE = 3, 2


def _windows(a):
    v = np.lib.stride_tricks.sliding_window_view(a, (SIZE, SIZE), axis=(2, 3))
    return v[:, :, ::STRIDE, ::STRIDE]  # (n, c, p, q, size, size), a view


def numpy_max_pool(a):
    return _windows(a).max(axis=(4, 5))


def numpy_max_pool_backward(a, g):
    n, c, p, q = g.shape
    first = _windows(a).reshape(n, c, p, q, SIZE * SIZE).argmax(axis=4)  # first maximum
    rows = np.arange(p)[:, None] * STRIDE + first // SIZE
    cols = np.arange(q)[None, :] * STRIDE + first % SIZE
    dx = np.zeros_like(a)
    ni, ci = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    np.add.at(dx, (ni[:, :, None, None], ci[:, :, None, None], rows, cols), g)
    return dx


def _with_variant(v, fn):
    """fn run under CUDA max-pool variant v (set before each call: rows run one after another)."""
    def run():
        _C.set_pool_variant(v)
        return fn()
    return run


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    default = _C.pool_variant()
    rows_wanted = ctx.get("variant_rows", dev != "cpu")
    variants = [v for v in (0, 1, 2) if v != default] + [default] if rows_wanted else []  # the default last
    out = []
    for name, shape in SHAPES:
        a = np.random.standard_normal((n,) + shape).astype(np.float32)
        x = convnet.tensor(a, dev)
        y, idx = ops.max_pool(x, SIZE, STRIDE, return_indices=True)
        g = np.random.standard_normal(y.shape).astype(np.float32)
        dy = convnet.tensor(g, dev)
        fwd = {"name": f"max_pool {name}", "bytes": a.nbytes + g.nbytes,
               "ours": lambda x=x: ops.max_pool(x, SIZE, STRIDE),
               "numpy": lambda a=a: numpy_max_pool(a)}
        fwd_i = {"name": f"max_pool+idx {name}", "bytes": a.nbytes + 2 * g.nbytes,
                 "ours": lambda x=x: ops.max_pool(x, SIZE, STRIDE, return_indices=True)}
        bwd = {"name": f"max_pool_backward {name}", "bytes": 2 * a.nbytes + 2 * g.nbytes,
               "ours": lambda x=x, y=y, dy=dy: ops.max_pool_backward(x, y, dy, SIZE, STRIDE),
               "numpy": lambda a=a, g=g: numpy_max_pool_backward(a, g)}
        bwd_i = {"name": f"max_pool_backward+idx {name}", "bytes": a.nbytes + 2 * g.nbytes,
                 "ours": lambda x=x, dy=dy, idx=idx: ops.max_pool_backward(x, None, dy, SIZE, STRIDE, indices=idx)}
        if torch is not None:
            F = torch.nn.functional
            t = torch.from_numpy(a).to(ctx["torch_device"])
            fwd["torch"] = lambda t=t: F.max_pool2d(t, SIZE, STRIDE)
            fwd_i["torch"] = lambda t=t: F.max_pool2d(t, SIZE, STRIDE, return_indices=True)
            _, tidx = F.max_pool2d(t, SIZE, STRIDE, return_indices=True)
            tg = torch.from_numpy(g).to(ctx["torch_device"])
            # torch's backward scatters from the indices its forward saved
            bwd["torch"] = bwd_i["torch"] = lambda t=t, tg=tg, tidx=tidx: torch.ops.aten.max_pool2d_with_indices_backward(
                tg, t, [SIZE, SIZE], [STRIDE, STRIDE], [0, 0], [1, 1], False, tidx)
        rows = [{"name": f"{case['name']} v{v}", "bytes": case["bytes"], "ours": _with_variant(v, case["ours"])}
                for v in variants for case in (bwd, bwd_i)]
        for case in (fwd, fwd_i, bwd, bwd_i):
            case["ours"] = _with_variant(default, case["ours"])
        out += [fwd, fwd_i, bwd, bwd_i] + rows
    return out
