"""AlexNet's fully-connected layers: forward (with bias), and backward (linear_backward: dx, dw
and db together, 2x the forward's flops). GFLOP/s counts 2 flops per multiply-add. CONVNET_BENCH_VARIANTS: see bench_conv.with_variants."""
import numpy as np

import convnet
from bench_conv import with_variants
from convnet import ops

LAYERS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    rng = np.random.default_rng(0)
    out = []
    for name, (i, o) in LAYERS.items():
        x = rng.standard_normal((n, i), dtype=np.float32)
        w = (rng.standard_normal((o, i), dtype=np.float32) * 0.01).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        dy = rng.standard_normal((n, o), dtype=np.float32)
        X, W, B, DY = (convnet.tensor(a, dev) for a in (x, w, b, dy))
        flops = 2.0 * n * i * o
        fwd = {"name": f"{name} forward", "flops": flops, "ours": lambda X=X, W=W, B=B: ops.linear(X, W, B)}
        bwd = {"name": f"{name} backward", "flops": 2 * flops,
               "ours": lambda X=X, W=W, DY=DY: ops.linear_backward(X, W, DY)}
        if torch is not None:
            td = ctx["torch_device"]
            tx, tw, tb, tdy = (torch.from_numpy(a).to(td) for a in (x, w, b, dy))
            fwd["torch"] = lambda tx=tx, tw=tw, tb=tb: torch.nn.functional.linear(tx, tw, tb)
            bwd["torch"] = lambda tx=tx, tw=tw, tdy=tdy: (tdy @ tw, tdy.t() @ tx, tdy.sum(0))
        out += [fwd, bwd]
    return with_variants(out, ctx)
