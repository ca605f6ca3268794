"""The calls that tools/gpu_check.sh's ncu and memcheck stages run under the profilers.

    python tools/gpu_probe.py          conv2's backward-filter at batch 128 (variant 5's FFT path),
                                       max-pool (with and without saved indices, every CUDA variant)
                                       and LRN, forward and backward, at conv1's size (LRN also on
                                       56x56 planes): for ncu
    python tools/gpu_probe.py small    the same ops on small, odd shapes, a runtime-size pooling
                                       window, concat/split (aligned rows and not) and softmax
                                       over 300 rows: for compute-sanitizer (memcheck), which is slow
    python tools/gpu_probe.py host     microseconds a call of the small (fc6-sized) ops and of their
                                       parts (an allocation, a copy, a launch), 2,000 calls back to
                                       back (CONVNET_PROBE_CALLS), one drain: where a host-bound
                                       call's time goes (gpu_check stage host); relu and dropout as
                                       benchmarks/run.py times them; with a CUDA PyTorch, both
                                       again after one torch.profiler session
"""
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if any(f.startswith("_C") for f in os.listdir(os.path.join(ROOT, "convnet"))):
    sys.path.insert(0, ROOT)  # an in-place build (tools/dev_build.sh), not an installed convnet

import convnet  # noqa: E402
import convnet.ops as ops  # noqa: E402

small = sys.argv[1:] == ["small"]
DEVICE = os.environ.get("CONVNET_PROBE_DEVICE", "cuda:0")  # cpu: a smoke run where there is no GPU
rng = np.random.default_rng(0)


def t(*shape):
    return convnet.tensor(rng.standard_normal(shape).astype(np.float32), device=DEVICE)


if sys.argv[1:] == ["host"]:
    import time

    CALLS = int(os.environ.get("CONVNET_PROBE_CALLS", "2000"))  # fewer: .ci/run's check on the emulator
    x = t(128, 4096)
    mask = ops.dropout(x, 0.5, 1)[1]
    dst, probs = convnet.empty(x.shape, "float32", DEVICE), t(128, 1000)
    labels = convnet.tensor(rng.integers(0, 1000, 128).astype(np.int32), device=DEVICE)
    calls = [("empty float32 (128, 4096): allocate + free", lambda: convnet.empty(x.shape, "float32", DEVICE)),
             ("empty uint8 (128, 4096)", lambda: convnet.empty(x.shape, "uint8", DEVICE)),
             ("copy_ (128, 4096): no allocation", lambda: dst.copy_(x)),
             ("relu (128, 4096)", lambda: ops.relu(x)),
             ("dropout (128, 4096)", lambda: ops.dropout(x, 0.5, 1)),
             ("_C.dropout (no Python wrapper)", lambda: convnet._C.dropout(x, 0.5, 1)),
             ("dropout_backward (128, 4096)", lambda: ops.dropout_backward(x, mask, 0.5)),
             ("softmax_cross_entropy (128, 1000): one sync", lambda: ops.softmax_cross_entropy(probs, labels)),
             ("softmax_cross_entropy_backward", lambda: ops.softmax_cross_entropy_backward(probs, labels))]
    def table(calls):
        for name, fn in calls:
            for _ in range(min(50, CALLS)):
                fn()
            convnet.synchronize(DEVICE)
            t0 = time.perf_counter()
            for _ in range(CALLS):
                fn()
            convnet.synchronize(DEVICE)
            print(f"{name:48s} {(time.perf_counter() - t0) / CALLS * 1e6:8.2f}")

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    from run import timer

    def in_turn():  # benchmarks/run.py's timer: groups of <= 32 calls and a drain, in turn with the copy
        for name, fn in [("relu", lambda: ops.relu(x)), ("dropout", lambda: ops.dropout(x, 0.5, 1))]:
            ours, copy = timer([(fn, None), (lambda: dst.copy_(x), None)], DEVICE)
            print(f"{name} (128, 4096) in turn with copy_: {ours * 1e6:.2f} and {copy * 1e6:.2f} us a call")

    print(f"# {DEVICE}: microseconds a call, {CALLS} calls back to back, then one drain")
    table(calls)
    in_turn()
    try:  # does PyTorch's profiler leave every later CUDA call slower (CUPTI still hooked in)?
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        sys.exit(0)
    if DEVICE != "cpu" and torch.cuda.is_available():  # (a PyTorch without CUDA: no CUDA activity)
        with profile(activities=[ProfilerActivity.CUDA]):
            dst.copy_(x)
            convnet.synchronize(DEVICE)
        print("# the same after one torch.profiler session (as benchmarks/run.py --profile ran them until 09b52f3)")
        table([c for c in calls if not c[0].startswith("softmax")])
        in_turn()
    sys.exit(0)

n = 3 if small else 128
x, w, dy = t(n, 96, 27, 27), t(256, 48, 5, 5), t(n, 256, 27, 27)
_, dw, _ = ops.conv2d_backward(x, w, dy, stride=1, padding=2, groups=2, input_grad=False)
print("conv2 dw std", dw.numpy().std())

a = t(3, 40, 13, 13) if small else t(128, 96, 55, 55)
g = None
default_pool = convnet._C.pool_variant()
for variant in (0, 1, 2):  # CONVNET_POOL_VARIANT: each kernel set (the same bits, so the same sums)
    convnet._C.set_pool_variant(variant)
    y, idx = ops.max_pool(a, return_indices=True)
    g = t(*y.shape) if g is None else g
    print(f"max_pool v{variant} backward sums", ops.max_pool_backward(a, y, g).numpy().sum(),
          ops.max_pool_backward(a, y, g, indices=idx).numpy().sum())
convnet._C.set_pool_variant(default_pool)
print("lrn backward sum", ops.lrn_backward(a, ops.lrn(a), t(*a.shape)).numpy().sum())
if not small:  # conv1's LRN on 56x56 planes, each line-aligned (bench_lrn.py's probe rows)
    b = t(128, 96, 56, 56)
    print("lrn_backward 56x56 sum", ops.lrn_backward(b, ops.lrn(b), t(*b.shape)).numpy().sum())

if small:  # also the runtime-window gather, and concat/split on both of copy_rows's paths
    # the LRN's redo pass with its flag raised (squares past float's range), and the direct kernels
    big = a.numpy().copy()
    big[0, 3] = 3e19
    bt = convnet.tensor(big, DEVICE)
    print("lrn out of range", ops.lrn(bt).numpy()[0, 3].max(),
          ops.lrn_backward(bt, ops.lrn(bt), t(*a.shape)).numpy()[0, 3].sum())
    print("lrn size 11 backward sum", ops.lrn_backward(a, ops.lrn(a, 11), t(*a.shape), 11).numpy().sum())
    y2 = ops.max_pool(a, 2, 3)
    print("max_pool_backward 2/3 sum", ops.max_pool_backward(a, y2, t(*y2.shape), 2, 3).numpy().sum())
    for k in (4, 3):
        joined = ops.concat([t(3, k, 5, 4), t(3, 8, 5, 4)], 1)
        print("concat/split", [p.shape for p in ops.split(joined, [k, 8], 1)])
    logits = t(300, 1000)
    labels = convnet.tensor(rng.integers(0, 1000, 300).astype(np.int32), device=DEVICE)
    loss, probs = ops.softmax_cross_entropy(logits, labels)
    print("softmax", loss, ops.softmax_cross_entropy_backward(probs, labels).numpy().sum())
