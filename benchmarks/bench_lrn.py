"""Local response normalisation on the AlexNet shapes (after conv1 and conv2), the paper's
constants. Bytes moved: forward reads x and writes y; backward reads x and dy and writes dx
(s is recomputed from x, y is not read). On a GPU each case also runs under every CUDA kernel
variant (CONVNET_LRN_VARIANT, csrc/cuda/lrn.cu), as rows "... v0" to "... v2"; the plain rows use the
default variant. On a GPU, "probe" rows (not counted against the goals) run conv1's LRN on 56x56
planes: 55 x 55 = 3025 is odd, so every channel plane starts off a 128-byte line and a warp's 32
loads touch 5 sectors, not 4; on 56x56 every row starts on a line (H200, 0627c99: 0.77 / 0.72 of
copy there, 0.69 / 0.67 on 55x55)."""
import numpy as np

import convnet
from convnet import _C, ops

SHAPES = [("conv1", (96, 55, 55)), ("conv2", (256, 27, 27))]
SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0


def _window_sums(v, size):
    """Sum over the channel window by a cumulative sum along C (NumPy's fastest route)."""
    half = size // 2
    cs = np.cumsum(v, axis=1, dtype=np.float32)
    cs = np.concatenate([np.zeros_like(cs[:, :1]), cs], axis=1)
    c = v.shape[1]
    hi = np.minimum(np.arange(c) + half + 1, c)
    lo = np.maximum(np.arange(c) - half, 0)
    return cs[:, hi] - cs[:, lo]


def numpy_lrn(a):
    return a * (K + ALPHA * _window_sums(a * a, SIZE)) ** -BETA


def numpy_lrn_backward(a, g):
    s = K + ALPHA * _window_sums(a * a, SIZE)
    p = s ** -BETA
    return g * p - 2 * ALPHA * BETA * a * _window_sums(g * a * p / s, SIZE)


def _with_variant(v, fn):
    """fn run under CUDA LRN variant v (set before each call: rows run one after another)."""
    def run():
        _C.set_lrn_variant(v)
        return fn()
    return run


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    default = _C.lrn_variant()
    rows_wanted = ctx.get("variant_rows", dev != "cpu")
    variants = [v for v in (0, 1, 2) if v != default] + [default] if rows_wanted else []  # the default last
    out = []
    for name, shape in SHAPES:
        a = np.abs(np.random.standard_normal((n,) + shape)).astype(np.float32) * 20  # ReLU outputs
        g = np.random.standard_normal(a.shape).astype(np.float32)
        x, dy = convnet.tensor(a, dev), convnet.tensor(g, dev)
        y = ops.lrn(x, SIZE, ALPHA, BETA, K)
        fwd_fn = lambda x=x: ops.lrn(x, SIZE, ALPHA, BETA, K)
        bwd_fn = lambda x=x, y=y, dy=dy: ops.lrn_backward(x, y, dy, SIZE, ALPHA, BETA, K)
        fwd = {"name": f"lrn {name}", "bytes": 2 * a.nbytes, "ours": _with_variant(default, fwd_fn),
               "numpy": lambda a=a: numpy_lrn(a)}
        bwd = {"name": f"lrn_backward {name}", "bytes": 3 * a.nbytes, "ours": _with_variant(default, bwd_fn),
               "numpy": lambda a=a, g=g: numpy_lrn_backward(a, g)}
        if torch is not None:
            F = torch.nn.functional
            t = torch.from_numpy(a).to(ctx["torch_device"])
            fwd["torch"] = lambda t=t: F.local_response_norm(t, SIZE, ALPHA * SIZE, BETA, K)  # torch divides by size
            tx = t.clone().requires_grad_(True)
            ty = F.local_response_norm(tx, SIZE, ALPHA * SIZE, BETA, K)
            tg = torch.from_numpy(g).to(ctx["torch_device"])
            bwd["torch"] = lambda tx=tx, ty=ty, tg=tg: torch.autograd.grad(ty, tx, tg, retain_graph=True)
        out += [fwd, bwd]
        if dev != "cpu" and name == "conv1":
            b = np.abs(np.random.standard_normal((n, 96, 56, 56))).astype(np.float32) * 20
            xb, dyb = convnet.tensor(b, dev), convnet.tensor(b[:, ::-1].copy(), dev)
            yb = ops.lrn(xb, SIZE, ALPHA, BETA, K)
            out.append({"name": "lrn conv1@56x56 probe", "bytes": 2 * b.nbytes, "probe": True,
                        "ours": _with_variant(default, lambda x=xb: ops.lrn(x, SIZE, ALPHA, BETA, K))})
            out.append({"name": "lrn_backward conv1@56x56 probe", "bytes": 3 * b.nbytes, "probe": True,
                        "ours": _with_variant(default, lambda x=xb, y=yb, dy=dyb: ops.lrn_backward(
                            x, y, dy, SIZE, ALPHA, BETA, K))})
        for v in variants:
            out.append({"name": f"lrn {name} v{v}", "bytes": 2 * a.nbytes, "ours": _with_variant(v, fwd_fn)})
            out.append({"name": f"lrn_backward {name} v{v}", "bytes": 3 * a.nbytes, "ours": _with_variant(v, bwd_fn)})
    return out
