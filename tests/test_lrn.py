"""Local response normalisation (the paper's cross-channel form, alpha not divided by size)."""
import numpy as np
import pytest

import convnet
from convnet import _C, ops

from reference import assert_close, numeric_grad

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


# ---- NumPy float64 references ----

def _window_sums(v, size):
    """out[:, i] = sum of v[:, j] over the window max(0, i-size//2) .. min(C-1, i+size//2)."""
    c, half = v.shape[1], size // 2
    out = np.empty_like(v)
    for i in range(c):
        out[:, i] = v[:, max(0, i - half):min(c - 1, i + half) + 1].sum(axis=1)
    return out


def lrn_ref(x, size, alpha, beta, k):
    x = np.asarray(x, np.float64)
    return x * (k + alpha * _window_sums(x * x, size)) ** -beta


def lrn_backward_ref(x, dy, size, alpha, beta, k):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    s = k + alpha * _window_sums(x * x, size)
    t = dy * x * s ** (-beta - 1)
    return dy * s ** -beta - 2 * alpha * beta * x * _window_sums(t, size)


def _params(size, alpha, beta, k):
    return dict(size=size, alpha=alpha, beta=beta, k=k)


# (x shape, size, alpha, beta, k, input scale): the paper's constants on ReLU-sized inputs, and
# strong normalisation (alpha*sum comparable to k) so the cross-channel term matters.
CASES = [
    ((1, 1, 3, 3), 5, 0.5, 0.75, 1.0, 1.0),     # one channel, window wider than C
    ((1, 2, 4, 5), 5, 0.5, 0.75, 1.0, 1.0),
    ((1, 3, 5, 2), 5, 0.3, 0.6, 0.5, 1.0),      # C below the window, general beta
    ((2, 7, 5, 3), 3, 0.2, 1.0, 2.0, 1.0),
    ((3, 16, 7, 9), 5, 1e-4, 0.75, 2.0, 30.0),  # paper constants, batch 3, odd H/W
    ((1, 10, 3, 4), 1, 0.4, 0.75, 1.0, 1.0),    # size 1: each channel alone
    ((2, 20, 3, 5), 11, 0.05, 0.75, 1.0, 1.0),  # wide window (the CUDA direct-sum path)
    ((1, 5, 2, 2), 101, 0.1, 0.9, 1.5, 1.0),    # window far wider than C
    ((1, 70, 3, 3), 5, 0.2, 0.75, 1.0, 1.0),    # several channel chunks on CUDA, uneven
    ((1, 70, 3, 3), 9, 0.1, 1.3, 1.0, 1.0),
    ((2, 96, 55, 55), 5, 1e-4, 0.75, 2.0, 30.0),   # AlexNet conv1
    ((2, 256, 27, 27), 5, 1e-4, 0.75, 2.0, 30.0),  # AlexNet conv2
]


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("c", [1, 2, 6])
def test_lrn_reference_gradient(rng, size, c):
    x = rng.standard_normal((2, c, 2, 3))
    dy = rng.standard_normal(x.shape)
    for alpha, beta, k in [(0.5, 0.75, 1.0), (0.2, 1.3, 0.5)]:
        p = _params(size, alpha, beta, k)
        num = numeric_grad(lambda v: lrn_ref(v, **p) * dy, x)
        assert_close(lrn_backward_ref(x, dy, **p), num, 1e-7, "reference gradient")


@pytest.mark.parametrize("shape,size,alpha,beta,k,scale", CASES)
def test_lrn_forward_backward(device, rng, shape, size, alpha, beta, k, scale):
    _check_forward_backward(device, rng, shape, size, alpha, beta, k, scale)


@pytest.fixture
def lrn_variant(request):
    before = _C.lrn_variant()
    _C.set_lrn_variant(request.param)
    yield request.param
    _C.set_lrn_variant(before)


# The CUDA kernel variants (CONVNET_LRN_VARIANT, csrc/cuda/lrn.cu): each against the reference.
VARIANTS = [0, 1, 2]


@pytest.mark.parametrize("lrn_variant", VARIANTS, indirect=True, ids=[f"v{v}" for v in VARIANTS])
@pytest.mark.parametrize("shape,size,alpha,beta,k,scale", CASES + [((1, 300, 2, 3), 5, 0.2, 0.75, 1.0, 1.0),
                                                                   ((2, 37, 3, 5), 3, 0.2, 0.6, 1.0, 2.0),
                                                                   ((3, 70, 37, 31), 5, 1e-4, 0.75, 2.0, 20.0),
                                                                   ((2, 9, 23, 29), 9, 0.1, 0.75, 1.0, 3.0)])
def test_lrn_variants(device, rng, lrn_variant, shape, size, alpha, beta, k, scale):
    if device == "cpu":
        pytest.skip("the variants are CUDA kernels; the CPU twin has one")
    _check_forward_backward(device, rng, shape, size, alpha, beta, k, scale)


# Inputs that start off a 128-byte line (DLPack views into a larger buffer), x and dy at different
# offsets (every variant).
@pytest.mark.parametrize("lrn_variant", VARIANTS, indirect=True, ids=[f"v{v}" for v in VARIANTS])
def test_lrn_inputs_off_a_line(device, rng, lrn_variant):
    if device == "cpu" and lrn_variant != VARIANTS[0]:
        pytest.skip("the variants are CUDA kernels; the CPU twin has one")
    torch = pytest.importorskip("torch")
    if device != "cpu" and not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    shape, p = (2, 11, 19, 23), _params(5, 0.1, 0.75, 1.0)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)

    def view_at(a, floats):
        buf = torch.full((a.size + 64,), float("nan"), device=device)
        buf[floats:floats + a.size] = torch.from_numpy(a.ravel()).to(device)
        return convnet.from_dlpack(buf[floats:floats + a.size].view(a.shape))

    xt, dyt = view_at(x, 5), view_at(dy, 19)
    assert xt.data_ptr() % 128 != dyt.data_ptr() % 128
    y = ops.lrn(xt, **p)
    assert_close(y.numpy(), lrn_ref(x, **p), 2e-6, "lrn")
    assert_close(ops.lrn_backward(xt, y, dyt, **p).numpy(), lrn_backward_ref(x, dy, **p), 1e-5, "lrn_backward")


def test_lrn_variant_setting():
    before = _C.lrn_variant()
    assert before in VARIANTS
    try:
        _C.set_lrn_variant(0)
        assert _C.lrn_variant() == 0
        with pytest.raises(ValueError, match="set_lrn_variant: variant must be 0 to 2, got 3"):
            _C.set_lrn_variant(3)
    finally:
        _C.set_lrn_variant(before)


def _check_forward_backward(device, rng, shape, size, alpha, beta, k, scale):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    p = _params(size, alpha, beta, k)
    xt = convnet.tensor(x, device)
    y = ops.lrn(xt, **p)
    assert y.device == device and y.dtype == "float32" and y.shape == shape
    assert_close(y.numpy(), lrn_ref(x, **p), 2e-6, "lrn")
    dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), **p)
    assert dx.device == device and dx.shape == shape
    assert_close(dx.numpy(), lrn_backward_ref(x, dy, **p), 1e-5, "lrn_backward")


def test_lrn_paper_defaults(device, rng):
    x = (np.abs(rng.standard_normal((2, 12, 4, 5))) * 40).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = convnet.tensor(x, device)
    y = ops.lrn(xt)  # size 5, alpha 1e-4, beta 0.75, k 2
    assert_close(y.numpy(), lrn_ref(x, **PAPER), 2e-6, "lrn")
    dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device))
    assert_close(dx.numpy(), lrn_backward_ref(x, dy, **PAPER), 1e-5, "lrn_backward")


def test_lrn_large_dynamic_range(device, rng):
    # A huge channel next to tiny ones: a running add/subtract window sum would lose the tiny ones.
    x = (rng.standard_normal((1, 12, 3, 4)) * 1e-3).astype(np.float32)
    x[:, 3] = 1e3
    p = _params(3, 1.0, 0.75, 1e-6)
    y = ops.lrn(convnet.tensor(x, device), **p).numpy()
    ref = lrn_ref(x, **p)
    for c in range(12):  # every channel to its own scale
        assert_close(y[:, c], ref[:, c], 2e-6, f"channel {c}")


def test_lrn_matches_torch(device, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for shape, size, alpha, beta, k in [((2, 16, 6, 7), 5, 0.1, 0.75, 2.0), ((1, 3, 5, 5), 5, 0.3, 0.6, 1.0)]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = convnet.tensor(x, device)
        y = ops.lrn(xt, size, alpha, beta, k)
        dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), size, alpha, beta, k)
        tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        ty = F.local_response_norm(tx, size, alpha=alpha * size, beta=beta, k=k)  # torch divides by size
        ty.backward(torch.tensor(dy, dtype=torch.float64))
        assert_close(y.numpy(), ty.detach().numpy(), 2e-6, "lrn vs torch")
        assert_close(dx.numpy(), tx.grad.numpy(), 1e-5, "lrn_backward vs torch")


def test_lrn_bad_input(device):
    x = convnet.tensor(np.ones((2, 3, 4, 4), np.float32), device)
    with pytest.raises(ValueError, match="lrn: 'x' must have 4 dimensions"):
        ops.lrn(convnet.tensor(np.ones((3, 4, 4), np.float32), device))
    with pytest.raises(TypeError, match="lrn: 'x' must be float32"):
        ops.lrn(convnet.tensor(np.ones((2, 3, 4, 4), np.int32), device))
    for size in (4, 0, -1):
        with pytest.raises(ValueError, match="lrn: size must be an odd integer"):
            ops.lrn(x, size=size)
    with pytest.raises(ValueError, match="lrn: k must be finite and > 0"):
        ops.lrn(x, k=0.0)
    with pytest.raises(ValueError, match="lrn: alpha must be"):
        ops.lrn(x, alpha=-1.0)
    with pytest.raises(ValueError, match="lrn: beta must be finite"):
        ops.lrn(x, beta=float("nan"))
    # finite doubles that become inf (or k 0) as the kernels' float32: outputs of NaN (zero inputs) or 0
    for bad, match in [(dict(alpha=1e39), "alpha must be finite and >= 0 as a float32, got 1e\\+39"),
                       (dict(beta=1e39), "beta must be finite as a float32"),
                       (dict(beta=-1e39), "beta must be finite as a float32"),
                       (dict(k=1e-50), "k must be finite and > 0 as a float32, got 1e-50"),
                       (dict(k=1e39), "k must be finite and > 0 as a float32")]:
        with pytest.raises(ValueError, match="lrn: " + match):
            ops.lrn(x, **bad)
        with pytest.raises(ValueError, match="lrn_backward: " + match):
            ops.lrn_backward(x, x, x, **bad)
    # channels past the CUDA kernels' int indexing (an empty tensor: the check comes before any work)
    huge = convnet.empty((1, 1 << 30, 0, 1), device=device)
    with pytest.raises(ValueError, match="lrn: channel counts of 2\\^30 or more are not supported"):
        ops.lrn(huge)
    y = ops.lrn(x)
    wrong = convnet.tensor(np.ones((2, 3, 4, 5), np.float32), device)
    with pytest.raises(ValueError, match="lrn_backward: 'dy' must have shape"):
        ops.lrn_backward(x, y, wrong)
    with pytest.raises(ValueError, match="lrn_backward: 'y' must have shape"):
        ops.lrn_backward(x, wrong, y)
    with pytest.raises(TypeError, match="lrn_backward: 'dy' must be float32"):
        ops.lrn_backward(x, y, convnet.tensor(np.ones((2, 3, 4, 4), np.int32), device))
    with pytest.raises(ValueError, match="lrn_backward: size must be an odd integer"):
        ops.lrn_backward(x, y, y, size=2)
    other = "cpu" if device != "cpu" else ("cuda:0" if convnet.cuda_available() else None)
    if other is not None:  # a second device to mismatch with
        with pytest.raises(ValueError, match="lrn_backward: 'x' is on"):
            ops.lrn_backward(x, y, y.to(other))
        with pytest.raises(ValueError, match="lrn_backward: 'x' is on"):
            ops.lrn_backward(x, y.to(other), y)


def test_lrn_overflowing_window_stays_finite(device, rng):
    # x^2 overflows float32 in channel 2: s = inf is clamped (both twins), so outputs stay finite
    x = rng.standard_normal((1, 6, 3, 4)).astype(np.float32)
    x[:, 2] = 3e19
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = convnet.tensor(x, device)
    y = ops.lrn(xt, **PAPER)
    dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), **PAPER)
    assert np.isfinite(y.numpy()).all() and np.isfinite(dx.numpy()).all()
    far = [5]  # channels whose window misses channel 2 match the reference
    assert_close(y.numpy()[:, far], lrn_ref(x, **PAPER)[:, far], 2e-6, "lrn away from the overflow")
