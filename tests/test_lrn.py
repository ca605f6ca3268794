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


def out_of_range_cases(rng):
    """(x, params) whose float32 evaluation leaves float's range somewhere (csrc/kernels/lrn.h: those
    elements are redone in double): overflowing sums of squares, s^-beta overflowing for a tiny k,
    s^(-beta-1) flushing to 0 (the backward only), a NaN input; each next to ordinary elements."""
    def normal(shape, scale=1.0):
        return rng.standard_normal(shape) * scale
    cases = []
    x = normal((1, 6, 3, 4))
    x[:, 2] = 3e19  # its square overflows
    cases.append((x, PAPER))
    x = np.full((1, 4, 2, 3), 1.8e19) * np.sign(normal((1, 4, 2, 3)))  # squares fit, their sum does not
    cases.append((x, PAPER))
    x = normal((1, 5, 2, 2))
    x[0, 1, 0, 0], x[0, 3, 1, 1], x[0, 2, 1, 0] = 3e38, -3e38, 0.0  # float's largest, beside a 0
    cases.append((x, PAPER))
    x = normal((1, 3, 2, 2))
    x[0, :, 0, 1] = [1e20, -1e20, 2e20]
    cases.append((x, _params(3, 1.0, 0.5, 2.0)))  # general beta: powf(inf) was 0
    x = normal((1, 13, 2, 3))
    x[0, 6, 1, 2] = 1e25
    cases.append((x, _params(11, 0.05, 1.3, 1.0)))  # a window past the ring kernels (CUDA direct path)
    x = np.zeros((1, 4, 2, 2))
    x[0, 1, 0, 0], x[0, 2, 1, 1], x[0, 3, 0, 1] = 1e-40, -3e-41, 0.5
    cases.append((x, _params(3, 1.0, 2.5, 1e-30)))  # k^-beta = 1e75: zero and subnormal inputs
    cases.append((normal((1, 6, 2, 3), 1e15), PAPER))  # s^(-beta-1) under float's normals
    x = normal((1, 7, 2, 2))
    x[0, 3, 1, 0] = np.nan
    cases.append((x, PAPER))
    return [(x.astype(np.float32), p) for x, p in cases]


def random_range_cases(rng, count):
    """(x, dy, params) drawn across float's range: inputs of 1e-30 to 3.4e38 (and a NaN now and
    then) under random window sizes, alpha, beta and k (those the entry point refuses included)."""
    cases = []
    for _ in range(count):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 4)), int(rng.integers(1, 5)))
        p = _params(int(rng.choice([1, 3, 5, 7, 11])), float(10 ** rng.uniform(-8, 3)) * (rng.random() > 0.1),
                    float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, 1.7, 3.0])), float(10 ** rng.uniform(-37, 5)))
        x = np.clip(rng.standard_normal(shape) * 10 ** rng.uniform(-30, 38, shape), -3.4e38, 3.4e38)
        if rng.random() < 0.05:
            x.flat[0] = np.nan
        dy = rng.standard_normal(shape) * 10 ** rng.uniform(-10, 30)
        cases.append((x.astype(np.float32), dy.astype(np.float32), p))
    return cases


def out_of_range_errors(x, dy, y, dx, p):
    """What in y and dx differs from the float64 references beyond float rounding, element by element
    ('' if nothing): y within 1e-5 of its value; dx within 1e-5 of the larger of its two terms (they
    may cancel); values past float's range as inf, NaN where the reference is NaN."""
    x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    s = p["k"] + p["alpha"] * _window_sums(x64 * x64, p["size"])
    t = dy64 * x64 * s ** (-p["beta"] - 1)
    terms = np.abs(dy64 * s ** -p["beta"]) + np.abs(2 * p["alpha"] * p["beta"] * x64 * _window_sums(t, p["size"]))
    out = []
    for name, got, ref, scale in [("y", y, lrn_ref(x, **p), np.abs(lrn_ref(x, **p))),
                                  ("dx", dx, lrn_backward_ref(x, dy, **p), terms)]:
        with np.errstate(over="ignore", invalid="ignore"):
            want = ref.astype(np.float32)  # inf past float's range
            ok = np.where(np.isfinite(want), np.abs(got - ref) <= 1e-5 * np.nan_to_num(scale) + 1e-44,
                          (got == want) | (np.isnan(got) & np.isnan(want)))
        if not ok.all():
            i = np.flatnonzero(~ok)[:3]
            out.append(f"{name} at {i.tolist()}: {got.flat[i].tolist()} against {ref.flat[i].tolist()}")
    return "; ".join(out)


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
    with pytest.raises(ValueError, match="lrn: k must be finite and >= 1.18e-38"):
        ops.lrn(x, k=0.0)
    with pytest.raises(ValueError, match="lrn: alpha must be"):
        ops.lrn(x, alpha=-1.0)
    with pytest.raises(ValueError, match="lrn: beta must be finite"):
        ops.lrn(x, beta=float("nan"))
    # finite doubles that become inf (or k 0) as the kernels' float32: outputs of NaN (zero inputs) or 0
    for bad, match in [(dict(alpha=1e39), "alpha must be finite and >= 0 as a float32, got 1e\\+39"),
                       (dict(beta=1e39), "beta must be finite and >= 0 as a float32"),
                       (dict(beta=-1e39), "beta must be finite and >= 0 as a float32"),
                       (dict(k=1e-50), "k must be finite and >= 1.18e-38 \\(a normal float32\\), got 1e-50"),
                       (dict(k=1e39), "k must be finite and >= 1.18e-38"),
                       # subnormal as a float32: s = k + alpha sum lost its digits
                       (dict(k=1e-40), "k must be finite and >= 1.18e-38 \\(a normal float32\\), got 1e-40"),
                       # amplifies; its exact path gave NaN for zero inputs
                       (dict(beta=-0.5), "beta must be finite and >= 0 as a float32, got -0.5"),
                       # squares under float's normal range (lost digits) would count against k
                       (dict(alpha=1e20, k=1e-30), "alpha / k must be at most 2\\^-24 / 1.18e-38"),
                       # the backward's factor 2 alpha beta subnormal as a float32 (lost digits)
                       (dict(alpha=1e-45, beta=0.75, k=1.0),
                        "2 alpha beta must be 0 or at least 1.18e-38 \\(a normal float32\\), got alpha = 1e-45"),
                       # a zero input's s^-beta = k^-beta past a double (the kernels' exact path)
                       (dict(alpha=0.0, k=1e-37, beta=9.0),
                        "k\\^-beta and k\\^-\\(beta\\+1\\) must fit in a double, got k = 1e-37")]:
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


@pytest.mark.parametrize("lrn_variant", VARIANTS, indirect=True, ids=[f"v{v}" for v in VARIANTS])
def test_lrn_out_of_float_range(device, rng, lrn_variant):
    # Each case is redone in double where float32 leaves its range; a clamped sum gave outputs
    # that grew with x (3.8e9 at x = 3e38, against 5.8e-17) and gradients of the wrong sign.
    if device == "cpu" and lrn_variant != VARIANTS[0]:
        pytest.skip("the variants are CUDA kernels; the CPU twin has one")
    for x, p in out_of_range_cases(rng):
        dy = rng.standard_normal(x.shape).astype(np.float32)
        xt = convnet.tensor(x, device)
        y = ops.lrn(xt, **p)
        dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), **p)
        bad = out_of_range_errors(x, dy, y.numpy(), dx.numpy(), p)
        assert not bad, f"{x.shape} {p}: {bad}"


def underflow_cases():
    """(x, dy, params) whose backward products fall under float's normal range while 2 alpha beta x_i
    scales them back up: t = dy x s^(-beta-1) flushed to 0 (alpha 1e30: the gradient was 4x off, and
    of the wrong sign with a window of 5), a subnormal t (found by fuzzing the CUDA kernels, k tiny),
    and a subnormal 2 alpha beta x_i against a large window sum."""
    cases = []
    for size in (1, 5):
        x = np.full((1, 3, 2, 2), 1e-15)
        x[0, 1, 1, 1] = 0.0
        cases.append((x, np.full(x.shape, 1e-30), _params(size, 1e30, 0.75, 1.0)))
    cases.append((np.array([54205.57]).reshape(1, 1, 1, 1), np.array([-1.5625806e-11]).reshape(1, 1, 1, 1),
                  _params(1, 0.2504776837179967, 3.0, 1.560912109731665e-25)))
    x = np.array([1e10, 1e-38, 1e10, 3.0]).reshape(1, 4, 1, 1)
    dy = np.array([1e30, 0.0, 1e30, 1.0]).reshape(1, 4, 1, 1)
    cases.append((x, dy, _params(3, 1e-4, 0.75, 2.0)))
    return [(x.astype(np.float32), dy.astype(np.float32), p) for x, dy, p in cases]


@pytest.mark.parametrize("lrn_variant", VARIANTS, indirect=True, ids=[f"v{v}" for v in VARIANTS])
def test_lrn_backward_underflow(device, lrn_variant):
    if device == "cpu" and lrn_variant != VARIANTS[0]:
        pytest.skip("the variants are CUDA kernels; the CPU twin has one")
    for x, dy, p in underflow_cases():
        xt = convnet.tensor(x, device)
        y = ops.lrn(xt, **p)
        dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), **p)
        with np.errstate(all="ignore"):
            bad = out_of_range_errors(x, dy, y.numpy(), dx.numpy(), p)
        assert not bad, f"{x.shape} {p}: {bad}"


@pytest.mark.parametrize("lrn_variant", VARIANTS, indirect=True, ids=[f"v{v}" for v in VARIANTS])
def test_lrn_random_ranges(device, rng, lrn_variant):
    # every accepted setting, on inputs across float's range, right element by element
    if device == "cpu" and lrn_variant != VARIANTS[0]:
        pytest.skip("the variants are CUDA kernels; the CPU twin has one")
    ran = 0
    for x, dy, p in random_range_cases(rng, 300):
        xt = convnet.tensor(x, device)
        try:
            y = ops.lrn(xt, **p)
        except ValueError:
            continue  # refused settings (tested in test_lrn_bad_input)
        dx = ops.lrn_backward(xt, y, convnet.tensor(dy, device), **p)
        with np.errstate(all="ignore"):
            bad = out_of_range_errors(x, dy, y.numpy(), dx.numpy(), p)
        assert not bad, f"{x.shape} {p}: {bad}"
        ran += 1
    assert ran > 200


def test_lrn_out_of_range_errors_catches_clamping(rng):
    # the check above against what the kernels did before (s clamped at FLT_MAX), and a wrong sign
    x, p = out_of_range_cases(rng)[0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    with np.errstate(over="ignore"):
        sums = _window_sums(x * x, p["size"])  # in float32, as the kernels: inf where a square overflows
    s = np.minimum(p["k"] + p["alpha"] * sums.astype(np.float64), 3.4028235e38)
    clamped = (x * s ** -p["beta"]).astype(np.float32)
    good_dx = lrn_backward_ref(x, dy, **p).astype(np.float32)
    assert "y at" in out_of_range_errors(x, dy, clamped, good_dx, p)
    assert "dx at" in out_of_range_errors(x, dy, lrn_ref(x, **p).astype(np.float32), -good_dx, p)
    assert out_of_range_errors(x, dy, lrn_ref(x, **p).astype(np.float32), good_dx, p) == ""
