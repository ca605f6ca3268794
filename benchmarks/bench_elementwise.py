"""Elementwise ops on AlexNet activation shapes. A case: name, ours (callable), and
optionally numpy / torch callables doing the same work, bytes moved, flops, items."""
import numpy as np

import convnet
from convnet import ops

# (name, per-image shape) of the activations each op sees in AlexNet
RELU_SHAPES = [("conv1", (96, 55, 55)), ("conv3", (384, 13, 13)), ("fc6", (4096,))]
# (name, shape) of the weights the update sees: fc6, and the largest and smallest conv layers
SGD_SHAPES = [("fc6 w", (4096, 9216)), ("conv3 w", (384, 256, 3, 3)), ("conv1 w", (96, 3, 11, 11))]


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    out = []
    for name, shape in RELU_SHAPES:
        a = np.random.standard_normal((n,) + shape).astype(np.float32)
        x = convnet.tensor(a, dev)
        case = {"name": f"relu {name}", "ours": lambda x=x: ops.relu(x), "bytes": 2 * a.nbytes,
                "numpy": lambda a=a: np.maximum(a, 0)}
        if torch is not None:
            t = torch.from_numpy(a).to(ctx["torch_device"])
            case["torch"] = lambda t=t: torch.relu(t)
        out.append(case)

    # dropout on the fc6/fc7 activations (p = 0.5 in the paper): reads x, writes y and a byte mask
    a = np.random.standard_normal((n, 4096)).astype(np.float32)
    x = convnet.tensor(a, dev)
    rng = np.random.default_rng(0)
    case = {"name": "dropout fc6", "ours": lambda x=x: ops.dropout(x, 0.5, 1), "bytes": 2 * a.nbytes + a.size,
            "numpy": lambda a=a: _numpy_dropout(rng, a, 0.5)}
    if torch is not None:
        t = torch.from_numpy(a).to(ctx["torch_device"])
        case["torch"] = lambda t=t: torch.nn.functional.dropout(t, 0.5, training=True)
    out.append(case)
    m = ops.dropout(x, 0.5, 1)[1]
    mask = m.numpy()
    case = {"name": "dropout_backward fc6", "ours": lambda x=x, m=m: ops.dropout_backward(x, m, 0.5),
            "bytes": 2 * a.nbytes + a.size, "numpy": lambda a=a, mask=mask: a * mask * np.float32(2.0)}
    if torch is not None:
        tm = torch.from_numpy(mask).to(ctx["torch_device"])
        case["torch"] = lambda t=t, tm=tm: t * tm * 2.0
    out.append(case)

    # the paper's update on one weight tensor: reads w, dw, v and writes w, v
    for name, shape in SGD_SHAPES:
        w0 = (0.01 * np.random.standard_normal(shape)).astype(np.float32)
        g0 = (0.01 * np.random.standard_normal(shape)).astype(np.float32)
        w, dw, v = convnet.tensor(w0, dev), convnet.tensor(g0, dev), convnet.tensor(np.zeros_like(w0), dev)
        case = {"name": f"sgd_update {name}", "ours": lambda w=w, dw=dw, v=v: ops.sgd_update(w, dw, v, 0.01),
                "bytes": 5 * w0.nbytes, "numpy": lambda w=w0.copy(), g=g0, v=np.zeros_like(w0): _numpy_sgd(w, g, v)}
        if torch is not None:
            tw, tg = torch.from_numpy(w0.copy()).to(ctx["torch_device"]), torch.from_numpy(g0).to(ctx["torch_device"])
            tv = torch.zeros_like(tw)
            case["torch"] = lambda tw=tw, tg=tg, tv=tv: _torch_sgd(tw, tg, tv)
        out.append(case)
    return out


def _numpy_dropout(rng, a, p):
    mask = rng.random(a.shape, dtype=np.float32) >= p
    return a * mask / np.float32(1 - p), mask


def _numpy_sgd(w, g, v, lr=0.01, momentum=0.9, wd=5e-4):
    v *= momentum
    v -= np.float32(wd * lr) * w
    v -= np.float32(lr) * g
    w += v


def _torch_sgd(w, g, v, lr=0.01, momentum=0.9, wd=5e-4):
    # the same rule in three fused-as-possible in-place passes (torch.optim.SGD's update order differs)
    v.mul_(momentum).add_(w, alpha=-wd * lr).add_(g, alpha=-lr)
    w.add_(v)
