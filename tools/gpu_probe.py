"""The calls that tools/gpu_check.sh's ncu and memcheck stages run under the profilers.

    python tools/gpu_probe.py          conv2's backward-filter at batch 128 (variant 5's FFT path),
                                       max-pool (with and without saved indices) and LRN, forward
                                       and backward, at conv1's size: for ncu
    python tools/gpu_probe.py small    the same ops on small, odd shapes, and softmax over 300
                                       rows: for compute-sanitizer (memcheck), which is slow
"""
import sys

import numpy as np

import convnet
import convnet.ops as ops

small = sys.argv[1:] == ["small"]
rng = np.random.default_rng(0)


def t(*shape):
    return convnet.tensor(rng.standard_normal(shape).astype(np.float32), device="cuda:0")


n = 3 if small else 128
x, w, dy = t(n, 96, 27, 27), t(256, 48, 5, 5), t(n, 256, 27, 27)
_, dw, _ = ops.conv2d_backward(x, w, dy, stride=1, padding=2, groups=2, input_grad=False)
print("conv2 dw std", dw.numpy().std())

a = t(3, 40, 13, 13) if small else t(128, 96, 55, 55)
y, idx = ops.max_pool(a, return_indices=True)
g = t(*y.shape)
print("max_pool_backward sums", ops.max_pool_backward(a, y, g).numpy().sum(),
      ops.max_pool_backward(a, y, g, indices=idx).numpy().sum())
yl = ops.lrn(a)
print("lrn_backward sum", ops.lrn_backward(a, yl, t(*a.shape)).numpy().sum())

if small:
    logits = t(300, 1000)
    labels = convnet.tensor(rng.integers(0, 1000, 300).astype(np.int32), device="cuda:0")
    loss, probs = ops.softmax_cross_entropy(logits, labels)
    print("softmax", loss, ops.softmax_cross_entropy_backward(probs, labels).numpy().sum())
