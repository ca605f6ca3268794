"""The CUDA GEMM variants of the conv and linear families (CONVNET_CONV_VARIANT, see
csrc/cuda/conv.cu): every variant against the NumPy float64 reference, switched at run time with
the hidden _C.set_conv_variant. The shapes are chosen to reach each path of each variant:
split-K (few output tiles, long reduction), stride-1 backward-data through flipped weights
(more than 16 input channels per group, padding < kernel), the phase GEMM (strided, or padding >=
kernel), the column path (<= 16 input channels per group), variant 2's 48-row tile (M <= 96) and
variant 3's Winograd F(4x4, 3x3) (3x3, stride 1, padding <= 2, >= 32 channels per group on both
sides; csrc/cuda/winograd.cuh), variant 4's multistage cp.async k loop (every GEMM above, incl. the
split-K ones and the last partial k-tile of odd K) and variant 5's FFT backward-filter (stride 1,
padded input within 32x32, P*Q*R*S >= 4352, >= 16 channels per group; csrc/cuda/fft.cuh). The
same relative tolerance (1e-4) holds for Winograd and FFT: their errors are ~2e-6 and ~5e-7
norm-wise on the AlexNet shapes (tools/emulate_winograd.cu, emulate_fft.cu)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import convnet
from convnet import _C, ops

import ref_conv as ref
from reference import assert_close

from test_conv import run_conv

VARIANTS = (0, 1, 2, 3, 4, 5)
VARIANT_IDS = [f"cuda-v{v}" for v in VARIANTS]  # "cuda" in the id: tools/gpu_check.sh counts these
needs_gpu = pytest.mark.skipif(
    not convnet.cuda_available(),
    reason="CUDA variants need a GPU (" + ("no GPU visible" if _C.cuda_built() else "built without CUDA") + ")")


@pytest.fixture
def variant(request):
    before = _C.conv_variant()
    _C.set_conv_variant(request.param)
    yield request.param
    _C.set_conv_variant(before)


CONV_CASES = [
    # n, c, h, w, k, r, s, stride, pad, groups
    (3, 40, 11, 13, 24, 3, 5, (1, 1), (1, 2), 2),    # flip path (Cg 20), grouped, uneven padding
    (2, 33, 9, 9, 70, 3, 3, (1, 1), (1, 1), 1),      # flip path, conv3-like
    (4, 17, 12, 10, 20, 1, 1, (1, 1), (0, 0), 1),    # flip path, pointwise
    (2, 36, 7, 8, 12, 3, 3, (1, 1), (3, 2), 2),      # padding >= kernel: phase path
    (2, 20, 15, 15, 9, 5, 5, (2, 2), (2, 2), 1),     # strided: phase path
    (2, 3, 31, 31, 16, 11, 11, (4, 4), (2, 2), 1),   # conv1-like: column path
    (6, 24, 14, 14, 32, 3, 3, (1, 1), (1, 1), 2),    # long backward-filter reduction: split-K
    (1, 3, 35, 35, 96, 11, 11, (4, 4), (2, 2), 1),   # conv1-like, M = 96: variant 2's 48-row tile
    (2, 96, 9, 9, 64, 5, 5, (1, 1), (2, 2), 2),      # conv2-like: flipped backward-data M = 48
    # variant 3's Winograd (the other variants run them through the implicit GEMM):
    (2, 64, 13, 13, 96, 3, 3, (1, 1), (1, 1), 1),    # conv3-like
    (3, 96, 11, 9, 99, 3, 3, (1, 1), (0, 2), 3),     # groups 3, Cg 32, Kg 33, uneven padding
    (2, 80, 7, 10, 64, 3, 3, (1, 1), (2, 1), 2),     # padding 2 (backward-data: flipped padding 0)
    (1, 64, 2, 3, 64, 3, 3, (1, 1), (1, 1), 1),      # smaller than one tile
    (5, 70, 17, 14, 70, 3, 3, (1, 1), (1, 1), 1),    # tiles cut at both edges
    (1, 384, 13, 13, 256, 3, 3, (1, 1), (1, 1), 2),  # conv5
    # variant 5's FFT backward-filter:
    (2, 96, 27, 27, 256, 5, 5, (1, 1), (2, 2), 2),   # conv2
    (3, 17, 28, 30, 20, 5, 7, (1, 1), (2, 1), 1),    # padded input exactly 32x32, odd channels
    (1, 32, 27, 27, 32, 5, 5, (1, 1), (2, 2), 2),    # batch 1, 16 channels per group
    (2, 20, 32, 32, 18, 11, 9, (1, 1), (0, 0), 1),   # 11x9 kernel: two chunks of taps per row
]


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, indirect=True, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv_variant(variant, rng, case):
    run_conv("cuda:0", rng, *case)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, indirect=True, ids=VARIANT_IDS)
@pytest.mark.parametrize("seed", range(6))
def test_conv_variant_random(variant, rng, seed):
    g = np.random.default_rng(1000 + seed)
    groups = int(g.integers(1, 3))
    cg = int(g.integers(1, 40))  # both sides of the column path's 16
    c, k = groups * cg, groups * int(g.integers(1, 40))
    r, s = int(g.integers(1, 6)), int(g.integers(1, 6))
    stride = (1, 1) if seed % 2 == 0 else (int(g.integers(1, 4)), int(g.integers(1, 4)))
    pad = (int(g.integers(0, r + 1)), int(g.integers(0, s + 1)))  # sometimes == kernel
    h = max(1, r - 2 * pad[0]) + int(g.integers(0, 12))
    w = max(1, s - 2 * pad[1]) + int(g.integers(0, 12))
    run_conv("cuda:0", rng, int(g.integers(1, 5)), c, h, w, k, r, s, stride, pad, groups)


@needs_gpu
@pytest.mark.parametrize("variant", [2, 3, 4], indirect=True, ids=["cuda-v2", "cuda-v3", "cuda-v4"])
@pytest.mark.parametrize("seed", range(6))
def test_conv_variant_winograd_random(variant, rng, seed):
    """Random shapes variant 3 sends to Winograd: odd sizes, padding 0-2 per side, groups 1-3."""
    g = np.random.default_rng(2000 + seed)
    groups = int(g.integers(1, 4))
    c, k = groups * int(g.integers(32, 49)), groups * int(g.integers(32, 49))
    pad = (int(g.integers(0, 3)), int(g.integers(0, 3)))
    h = max(1, 3 - 2 * pad[0]) + int(g.integers(0, 15))
    w = max(1, 3 - 2 * pad[1]) + int(g.integers(0, 15))
    run_conv("cuda:0", rng, int(g.integers(1, 4)), c, h, w, k, 3, 3, (1, 1), pad, groups)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, indirect=True, ids=VARIANT_IDS)
def test_conv_variant_deterministic(variant, rng):
    """Bit-identical results run after run, on shapes that reach split-K (the first), Winograd
    (the second, variants >= 3) and the FFT backward-filter (the third, variant 5)."""
    for n, c, h, k, r, pad, groups in [(6, 24, 14, 32, 3, 1, 2), (2, 64, 13, 96, 3, 1, 1), (2, 96, 27, 64, 5, 2, 2)]:
        x = convnet.tensor(rng.standard_normal((n, c, h, h)), "cuda:0")
        w = convnet.tensor(rng.standard_normal((k, c // groups, r, r)), "cuda:0")
        dy = convnet.tensor(rng.standard_normal((n, k, h, h)), "cuda:0")  # stride 1, padding (r - 1) / 2
        runs = [[ops.conv2d(x, w, None, 1, pad, groups).numpy()] +
                [t.numpy() for t in ops.conv2d_backward(x, w, dy, 1, pad, groups)] for _ in range(2)]
        for a, b in zip(*runs):
            assert np.array_equal(a, b)


@needs_gpu
@pytest.mark.parametrize("variant", [4, 5], indirect=True, ids=["cuda-v4", "cuda-v5"])
@pytest.mark.parametrize("seed", range(6))
def test_conv_variant_fft_random(variant, rng, seed):
    """Random shapes variant 5 sends to the FFT backward-filter: stride 1, the padded input
    within 32x32, large enough kernels, 16-40 channels per group, groups 1-3."""
    g = np.random.default_rng(3000 + seed)
    groups = int(g.integers(1, 4))
    c, k = groups * int(g.integers(16, 41)), groups * int(g.integers(16, 41))
    pad = (int(g.integers(0, 4)), int(g.integers(0, 4)))
    h, w = int(g.integers(20, 33 - 2 * pad[0])), int(g.integers(20, 33 - 2 * pad[1]))
    r, s = int(g.integers(5, 10)), int(g.integers(5, 10))  # P*Q*R*S >= 12*16*45 > 4352: all eligible
    run_conv("cuda:0", rng, int(g.integers(1, 4)), c, h, w, k, r, s, (1, 1), pad, groups)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, indirect=True, ids=VARIANT_IDS)
@pytest.mark.parametrize("n,i,o", [(64, 600, 300), (5, 33, 7), (128, 1100, 130), (96, 500, 200)])
def test_linear_variant(variant, rng, n, i, o):
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    X, W, B, DY = (convnet.tensor(a, "cuda:0") for a in (x, w, b, dy))
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    assert_close(ops.linear(X, W, B).numpy(), x64 @ w64.T + b, 1e-4, "y")
    dx, dw, db = ops.linear_backward(X, W, DY)
    assert_close(dx.numpy(), dy64 @ w64, 1e-4, "dx")
    assert_close(dw.numpy(), dy64.T @ x64, 1e-4, "dw")
    assert_close(db.numpy(), dy64.sum(0), 1e-4, "db")


def test_variant_switch_and_bad_values():
    before = _C.conv_variant()
    try:
        for v in VARIANTS:
            _C.set_conv_variant(v)
            assert _C.conv_variant() == v
        with pytest.raises(ValueError, match="variant must be 0 to 5"):
            _C.set_conv_variant(6)
        with pytest.raises(ValueError, match="variant must be 0 to 5"):
            _C.set_conv_variant(-1)
    finally:
        _C.set_conv_variant(before)


@pytest.mark.parametrize("value,expect", [("1", "1"), ("2", "2"), ("3", "3"), ("4", "4"), ("5", "5"), ("0", "0"), ("", "5"), ("7", "ValueError")])  # unset: the default, 5
def test_variant_from_environment(value, expect):
    code = ("from convnet import _C\n"
            "try:\n    print(_C.conv_variant())\n"
            "except ValueError as e:\n    print('ValueError', e)\n")
    # The child imports this same built convnet, from its folder (not the checkout's sources).
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, CONVNET_CONV_VARIANT=value, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(expect), out.stdout
