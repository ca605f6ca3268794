"""AlexNet's conv layers (one-device net: groups 1, 2, 1, 2, 2; conv1 on a 224x224 input with
padding 2, stride 4 -> 55x55). Three cases per layer: forward (with bias), backward-data
(the input gradient) and backward-filter (weight and bias gradients), each the forward's flops.
GFLOP/s counts 2 flops per multiply-add. CONVNET_BENCH_VARIANTS=2,3 (any list) times every case under
each CUDA GEMM variant (with_variants)."""
import os

import numpy as np

import convnet
from convnet import _C, ops

# name: c, h, k, kernel, stride, pad, groups
LAYERS = {
    "conv1": (3, 224, 96, 11, 4, 2, 1),
    "conv2": (96, 27, 256, 5, 1, 2, 2),
    "conv3": (256, 13, 384, 3, 1, 1, 1),
    "conv4": (384, 13, 384, 3, 1, 1, 2),
    "conv5": (384, 13, 256, 3, 1, 1, 2),
}


def with_variants(cases, ctx):
    """CONVNET_BENCH_VARIANTS=0,1,2 on a GPU: every case once per CUDA GEMM variant (see
    csrc/cuda/conv.cu), named '<case> v<variant>', side by side in one run."""
    wanted = os.environ.get("CONVNET_BENCH_VARIANTS", "")
    if not wanted or not str(ctx["device"]).startswith("cuda"):
        return cases
    def under(f, v):  # the variant is read when a kernel is launched, so restoring it after is safe
        def run():
            before = _C.conv_variant()
            _C.set_conv_variant(v)
            try:
                return f()
            finally:
                _C.set_conv_variant(before)
        return run

    return [dict(case, name=f"{case['name']} v{v}", ours=under(case["ours"], v))
            for case in cases for v in (int(x) for x in wanted.split(","))]


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    rng = np.random.default_rng(0)
    out = []
    for name, (c, h, k, r, st, pd, g) in LAYERS.items():
        p = (h + 2 * pd - r) // st + 1
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = (rng.standard_normal((k, c // g, r, r), dtype=np.float32) * 0.01).astype(np.float32)
        b = rng.standard_normal(k, dtype=np.float32)
        dy = rng.standard_normal((n, k, p, p), dtype=np.float32)
        X, W, B, DY = (convnet.tensor(a, dev) for a in (x, w, b, dy))
        flops = 2.0 * n * k * p * p * (c // g) * r * r
        fwd = {"name": f"{name} forward", "flops": flops,
               "ours": lambda X=X, W=W, B=B, st=st, pd=pd, g=g: ops.conv2d(X, W, B, st, pd, g)}
        bwd_data = {"name": f"{name} backward-data", "flops": flops,
                    "ours": lambda X=X, W=W, DY=DY, st=st, pd=pd, g=g: ops.conv2d_backward(
                        X, W, DY, st, pd, g, weight_grad=False)}
        bwd_filter = {"name": f"{name} backward-filter", "flops": flops,
                      "ours": lambda X=X, W=W, DY=DY, st=st, pd=pd, g=g: ops.conv2d_backward(
                          X, W, DY, st, pd, g, input_grad=False)}
        if torch is not None:
            td = ctx["torch_device"]
            tx, tw, tb, tdy = (torch.from_numpy(a).to(td) for a in (x, w, b, dy))
            fwd["torch"] = lambda tx=tx, tw=tw, tb=tb, st=st, pd=pd, g=g: torch.nn.functional.conv2d(
                tx, tw, tb, st, pd, 1, g)
            for case, mask in ((bwd_data, [True, False, False]), (bwd_filter, [False, True, True])):
                case["torch"] = lambda tx=tx, tw=tw, tdy=tdy, k=k, st=st, pd=pd, g=g, mask=mask: \
                    torch.ops.aten.convolution_backward(tdy, tx, tw, [k], [st, st], [pd, pd], [1, 1], False,
                                                        [0, 0], g, mask)
        out += [fwd, bwd_data, bwd_filter]
    return with_variants(out, ctx)
