"""Overlapping max-pool: no padding, floor output size, gradient to the first maximal element."""
import numpy as np
import pytest

import convnet
from convnet import _C, ops

from conftest import cuda_param
from reference import assert_close, numeric_grad


# Every test here runs on the CPU and on CUDA under each kernel variant (CONVNET_POOL_VARIANT,
# csrc/cuda/pool.cu): "cuda" variant 0, "cuda-v1" the backward's argmax scratch as one-byte codes,
# "cuda-v2" those codes and the gathers' dx staged through shared memory.
@pytest.fixture(params=[pytest.param(("cpu", None), id="cpu"), cuda_param(("cuda:0", 0), "cuda"),
                        cuda_param(("cuda:0", 1), "cuda-v1"), cuda_param(("cuda:0", 2), "cuda-v2")])
def device(request):
    dev, variant = request.param
    if variant is None:
        yield dev
        return
    before = _C.pool_variant()
    _C.set_pool_variant(variant)
    try:
        yield dev
    finally:
        _C.set_pool_variant(before)


def test_pool_variant_setting():
    before = _C.pool_variant()
    try:
        _C.set_pool_variant(1)
        assert _C.pool_variant() == 1
        with pytest.raises(ValueError, match="set_pool_variant: variant must be 0, 1 or 2, got 3"):
            _C.set_pool_variant(3)
        assert _C.pool_variant() == 1
    finally:
        _C.set_pool_variant(before)


# ---- NumPy float64 references ----

def _windows(h, w, size, stride):
    """(oh, ow, rows, cols) of every window, output positions in row-major order."""
    p, q = (h - size) // stride + 1, (w - size) // stride + 1
    for oh in range(p):
        for ow in range(q):
            yield oh, ow, slice(oh * stride, oh * stride + size), slice(ow * stride, ow * stride + size)


def max_pool_ref(x, size, stride):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    y = np.empty((n, c, (h - size) // stride + 1, (w - size) // stride + 1))
    for oh, ow, rows, cols in _windows(h, w, size, stride):
        y[:, :, oh, ow] = x[:, :, rows, cols].max(axis=(2, 3))  # NaN propagates
    return y


def max_pool_backward_ref(x, dy, size, stride):
    """Each window's dy to its first maximal element (np.argmax: first in row-major order)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    n, c, h, w = x.shape
    dx = np.zeros_like(x)
    ni, ci = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for oh, ow, rows, cols in _windows(h, w, size, stride):
        flat = x[:, :, rows, cols].reshape(n, c, -1).argmax(axis=2)
        r, col = rows.start + flat // size, cols.start + flat % size
        dx[ni, ci, r, col] += dy[:, :, oh, ow]
    return dx


def max_pool_indices_ref(x, size, stride):
    """Each window's first maximal element (np.argmax: row-major first, NaN first) as h * W + w."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    idx = np.empty((n, c, (h - size) // stride + 1, (w - size) // stride + 1), np.int32)
    for oh, ow, rows, cols in _windows(h, w, size, stride):
        flat = x[:, :, rows, cols].reshape(n, c, -1).argmax(axis=2)
        idx[:, :, oh, ow] = (rows.start + flat // size) * w + cols.start + flat % size
    return idx


def scatter_indices_ref(indices, dy, shape, size, stride, dtype=np.float64):
    """dx from saved indices: each window's dy to its index; an index outside its window is dropped.
    Windows go in row-major order (a window adds one element a plane), so in float32 these are the
    kernels' sums, bit for bit."""
    n, c, h, w = shape
    dx = np.zeros(shape, dtype)
    for oh, ow, rows, cols in _windows(h, w, size, stride):
        at = indices[:, :, oh, ow].astype(np.int64)
        r, col = at // w, at % w
        ok = (r >= rows.start) & (r < rows.stop) & (col >= cols.start) & (col < cols.stop) & (at >= 0)
        ni, ci = np.nonzero(ok)
        np.add.at(dx, (ni, ci, r[ok], col[ok]), dy[ni, ci, oh, ow].astype(dtype))
    return dx


def _distinct(rng, shape):
    """Inputs with all values distinct and well apart (no ties, safe for finite differences)."""
    v = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    return (v - v.mean()) * 0.01


# (x shape, size, stride)
CASES = [
    ((1, 1, 3, 3), 3, 2),      # a single window
    ((2, 3, 8, 8), 3, 2),      # the last window would be partial: dropped (out 3x3, row/col 7 unused)
    ((1, 2, 7, 9), 3, 2),      # odd H/W, batch 1
    ((1, 3, 11, 6), 3, 2),     # H != W
    ((2, 4, 6, 6), 2, 2),      # size == stride
    ((1, 3, 5, 7), 1, 1),      # identity
    ((1, 2, 9, 10), 2, 3),     # size < stride: gaps that get no gradient
    ((1, 2, 4, 6), 4, 1),      # window as tall as the input
    ((2, 5, 10, 10), 3, 1),    # each element in up to 9 windows
    ((2, 96, 55, 55), 3, 2),   # AlexNet pool1: 55 -> 27
    ((2, 256, 27, 27), 3, 2),  # pool2: 27 -> 13
    ((2, 256, 13, 13), 3, 2),  # pool5: 13 -> 6
]


@pytest.mark.parametrize("size,stride", [(3, 2), (2, 2), (2, 1), (1, 2)])
def test_max_pool_reference_gradient(rng, size, stride):
    x = _distinct(rng, (2, 2, 5, 6))
    dy = rng.standard_normal(max_pool_ref(x, size, stride).shape)
    num = numeric_grad(lambda v: max_pool_ref(v, size, stride) * dy, x, eps=1e-4)
    assert_close(max_pool_backward_ref(x, dy, size, stride), num, 1e-8, "reference gradient")


@pytest.mark.parametrize("shape,size,stride", CASES)
def test_max_pool_forward_backward(device, rng, shape, size, stride):
    x = rng.standard_normal(shape).astype(np.float32)
    yref = max_pool_ref(x, size, stride)
    dy = rng.standard_normal(yref.shape).astype(np.float32)
    xt = convnet.tensor(x, device)
    y = ops.max_pool(xt, size, stride)
    assert y.device == device and y.dtype == "float32" and y.shape == yref.shape
    assert_close(y.numpy(), yref, 0, "max_pool")
    dx = ops.max_pool_backward(xt, y, convnet.tensor(dy, device), size, stride)
    assert dx.device == device and dx.shape == shape
    assert_close(dx.numpy(), max_pool_backward_ref(x, dy, size, stride), 1e-6, "max_pool_backward")


def test_max_pool_output_sizes(device):
    x = convnet.tensor(np.random.default_rng(0).standard_normal((1, 1, 55, 55)), device)
    sizes = []
    for _ in range(3):
        x = ops.max_pool(x, 3, 2)
        sizes.append(x.shape[2:])
    assert sizes == [(27, 27), (13, 13), (6, 6)]
    assert ops.max_pool(convnet.tensor(np.zeros((1, 1, 8, 9), np.float32) + 1, device), 3, 2).shape == (1, 1, 3, 4)


@pytest.mark.parametrize("size,stride", [(3, 2), (2, 2), (3, 1)])
def test_max_pool_ties_go_to_first(device, rng, size, stride):
    # Few distinct values: most windows hold repeated maxima.
    x = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    yref = max_pool_ref(x, size, stride)
    dy = rng.standard_normal(yref.shape).astype(np.float32)
    xt = convnet.tensor(x, device)
    y = ops.max_pool(xt, size, stride)
    assert_close(y.numpy(), yref, 0, "max_pool")
    dx = ops.max_pool_backward(xt, y, convnet.tensor(dy, device), size, stride).numpy()
    assert_close(dx, max_pool_backward_ref(x, dy, size, stride), 1e-6, "max_pool_backward")
    # by hand: a constant input sends every window's gradient to its top-left corner
    ones = convnet.tensor(np.ones((1, 1, 5, 5), np.float32), device)
    dy2 = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    dx2 = ops.max_pool_backward(ones, ops.max_pool(ones, 3, 2), convnet.tensor(dy2, device), 3, 2).numpy()
    want = np.zeros((1, 1, 5, 5), np.float32)
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 1, 2, 3, 4
    assert np.array_equal(dx2, want)


def test_max_pool_deterministic(device, rng):
    x = rng.integers(0, 4, (2, 8, 13, 13)).astype(np.float32)
    xt = convnet.tensor(x, device)
    y = ops.max_pool(xt, 3, 1)
    dy = convnet.tensor(rng.standard_normal(y.shape), device)
    first = ops.max_pool_backward(xt, y, dy, 3, 1).numpy()
    for _ in range(3):
        assert np.array_equal(ops.max_pool_backward(xt, y, dy, 3, 1).numpy(), first)


def test_max_pool_devices_agree_bitwise(device, rng):
    # Both twins send each window's dy to the same element and add in the same (row-major) order.
    if device == "cpu":
        pytest.skip("compares a GPU against the CPU")
    x = rng.integers(0, 5, (2, 16, 27, 27)).astype(np.float32)  # many ties
    out = {}
    for dev in ("cpu", device):
        xt = convnet.tensor(x, dev)
        y = ops.max_pool(xt, 3, 2)
        dy = convnet.tensor(np.random.default_rng(1).standard_normal(y.shape), dev)
        out[dev] = (y.numpy(), ops.max_pool_backward(xt, y, dy, 3, 2).numpy())
    assert np.array_equal(out["cpu"][0], out[device][0])
    assert np.array_equal(out["cpu"][1], out[device][1])


def test_max_pool_nan_propagates(device, rng):
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    x[0, 0, 3, 3] = np.nan  # in four 3/2 windows
    x[0, 1, 0, 1] = np.nan
    x[0, 1, 1, 0] = np.nan  # a second NaN in the same window: the first one gets the gradient
    xt = convnet.tensor(x, device)
    y = ops.max_pool(xt, 3, 2).numpy()
    yref = max_pool_ref(x, 3, 2)
    assert np.array_equal(np.isnan(y), np.isnan(yref))
    assert np.array_equal(y[~np.isnan(y)], yref[~np.isnan(yref)])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.max_pool_backward(xt, convnet.tensor(y, device), convnet.tensor(dy, device), 3, 2).numpy()
    assert_close(dx, max_pool_backward_ref(x, dy, 3, 2), 1e-6, "max_pool_backward")


def test_max_pool_matches_torch(device, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for shape, size, stride in [((2, 5, 13, 13), 3, 2), ((1, 3, 8, 10), 2, 2), ((1, 2, 9, 7), 3, 1)]:
        x = rng.standard_normal(shape).astype(np.float32)
        xt = convnet.tensor(x, device)
        y = ops.max_pool(xt, size, stride)
        tx = torch.tensor(x, requires_grad=True)
        ty = F.max_pool2d(tx, size, stride)
        dy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
        ty.backward(torch.tensor(dy))
        dx = ops.max_pool_backward(xt, y, convnet.tensor(dy, device), size, stride)
        assert_close(y.numpy(), ty.detach().numpy(), 0, "max_pool vs torch")
        assert_close(dx.numpy(), tx.grad.numpy(), 1e-6, "max_pool_backward vs torch")


def test_max_pool_bad_input(device):
    x = convnet.tensor(np.ones((2, 3, 8, 8), np.float32), device)
    with pytest.raises(ValueError, match="max_pool: 'x' must have 4 dimensions"):
        ops.max_pool(convnet.tensor(np.ones((3, 8, 8), np.float32), device))
    with pytest.raises(TypeError, match="max_pool: 'x' must be float32"):
        ops.max_pool(convnet.tensor(np.ones((2, 3, 8, 8), np.uint8), device))
    with pytest.raises(ValueError, match="max_pool: window size 9 is larger than the input"):
        ops.max_pool(x, 9, 1)
    with pytest.raises(ValueError, match="max_pool: window size 4 is larger"):
        ops.max_pool(convnet.tensor(np.ones((1, 1, 8, 3), np.float32), device), 4, 1)
    with pytest.raises(ValueError, match="max_pool: size must be >= 1"):
        ops.max_pool(x, 0, 1)
    with pytest.raises(ValueError, match="max_pool: stride must be >= 1"):
        ops.max_pool(x, 3, 0)
    with pytest.raises(TypeError, match="max_pool: size must be an integer, got 3.9"):
        ops.max_pool(x, 3.9, 2)  # was truncated to 3
    with pytest.raises(TypeError, match="max_pool_backward: stride must be an integer"):
        ops.max_pool_backward(x, None, x, 3, "2")
    assert ops.max_pool(x, np.int64(3), np.uint8(2)).shape == (2, 3, 3, 3)
    y = ops.max_pool(x, 3, 2)  # (2, 3, 3, 3)
    with pytest.raises(ValueError, match="max_pool_backward: 'dy' must have shape"):
        ops.max_pool_backward(x, y, x, 3, 2)
    with pytest.raises(ValueError, match="max_pool_backward: 'y' must have shape"):
        ops.max_pool_backward(x, ops.max_pool(x, 2, 2), y, 3, 2)
    with pytest.raises(TypeError, match="max_pool_backward: 'dy' must be float32"):
        ops.max_pool_backward(x, y, convnet.tensor(np.ones((2, 3, 3, 3), np.int32), device), 3, 2)
    with pytest.raises(ValueError, match="max_pool_backward: window size 9"):
        ops.max_pool_backward(x, y, y, 9, 2)
    other = "cpu" if device != "cpu" else ("cuda:0" if convnet.cuda_available() else None)
    if other is not None:  # a second device to mismatch with
        with pytest.raises(ValueError, match="max_pool_backward: 'x' is on"):
            ops.max_pool_backward(x, y, y.to(other), 3, 2)
        with pytest.raises(ValueError, match="max_pool_backward: 'x' is on"):
            ops.max_pool_backward(x, y.to(other), y, 3, 2)



@pytest.mark.parametrize("stride", [20, 2**31 - 1, 2**32, 2**32 + 1, 2**62])
def test_max_pool_stride_past_the_plane(device, rng, stride):
    """A stride past the plane gives one window each way: the same result as a stride of the
    plane's size, with and without indices (once, 2^32 + 1 wrapped to 1 in the kernels' int
    arithmetic, 2^32 divided by zero, and the CPU asked for a buffer of stride floats)."""
    x = convnet.tensor(rng.standard_normal((2, 3, 20, 3)).astype(np.float32), device)
    dy = convnet.tensor(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), device)
    want_y, want_i = ops.max_pool(x, 2, 20, return_indices=True)
    y, i = ops.max_pool(x, 2, stride, return_indices=True)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y.numpy(), want_y.numpy())
    np.testing.assert_array_equal(i.numpy(), want_i.numpy())
    want_dx = ops.max_pool_backward(x, want_y, dy, 2, 20).numpy()
    np.testing.assert_array_equal(ops.max_pool_backward(x, y, dy, 2, stride).numpy(), want_dx)
    np.testing.assert_array_equal(ops.max_pool_backward(x, None, dy, 2, stride, indices=i).numpy(), want_dx)
    np.testing.assert_array_equal(want_dx, max_pool_backward_ref(x.numpy(), dy.numpy(), 2, 20))


# ---- saved indices (max_pool(..., return_indices=True), max_pool_backward(..., indices=)) ----

INDEX_CASES = CASES[:9] + [
    ((1, 2, 7, 7), 2, 2),     # size == stride, odd input: last row/column uncovered
    ((2, 3, 9, 11), 4, 3),    # size 4 stride 3
    ((1, 1, 6, 5), 3, 1),     # batch 1, dense overlap
    ((3, 2, 13, 13), 3, 2),   # pool5-like, batch 3
    ((1, 4, 55, 55), 3, 2),   # pool1-like: 27 windows a row (the CPU's 16-lane blocks and a partial one)
    ((1, 2, 20, 40), 3, 1),   # 38 windows a row, stride 1
    ((1, 2, 23, 37), 5, 4),   # stride 4: four column phases
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,size,stride", INDEX_CASES)
def test_max_pool_indices(device, rng, shape, size, stride, ties):
    # ties: integers from a small range, so most windows hold repeated maxima (first one wins)
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, size, stride, return_indices=True)
    assert idx.dtype == "int32" and idx.shape == y.shape and idx.device == device
    assert np.array_equal(idx.numpy(), max_pool_indices_ref(x, size, stride))
    assert np.array_equal(y.numpy(), ops.max_pool(xt, size, stride).numpy())  # the same y either way
    dy_np = rng.standard_normal(y.shape).astype(np.float32)
    dy = convnet.tensor(dy_np, device)
    with_idx = ops.max_pool_backward(xt, y, dy, size, stride, indices=idx).numpy()
    without = ops.max_pool_backward(xt, y, dy, size, stride).numpy()
    assert np.array_equal(with_idx, without)  # bitwise: the same element, the same sum order
    assert_close(with_idx, max_pool_backward_ref(x, dy_np, size, stride), 1e-6, "max_pool_backward(indices)")
    # y is only shape-checked with indices, and may be left out
    assert np.array_equal(ops.max_pool_backward(xt, None, dy, size, stride, indices=idx).numpy(), with_idx)


def test_max_pool_indices_nan(device, rng):
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    x[0, 0, 3, 3] = np.nan
    x[0, 1, 0, 1] = np.nan
    x[0, 1, 1, 0] = np.nan  # a second NaN in the same window: the first (row-major) wins
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, 3, 2, return_indices=True)
    assert np.array_equal(idx.numpy(), max_pool_indices_ref(x, 3, 2))
    assert np.array_equal(np.isnan(y.numpy()), np.isnan(max_pool_ref(x, 3, 2)))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.max_pool_backward(xt, None, convnet.tensor(dy, device), 3, 2, indices=idx).numpy()
    assert_close(dx, max_pool_backward_ref(x, dy, 3, 2), 1e-6, "max_pool_backward(indices) with NaN")


@pytest.mark.parametrize("planes", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("h,w,size,stride", [(13, 13, 3, 2), (9, 20, 3, 2), (7, 7, 2, 1), (11, 5, 4, 3),
                                             (6, 40, 3, 1), (55, 55, 3, 2)])
def test_max_pool_backward_plane_groups(device, rng, planes, h, w, size, stride):
    # The CPU backward without indices takes sixteen planes at a time, one a vector lane: a group
    # short of sixteen, planes whose size is no multiple of sixteen (the last one ends the tensor),
    # and a group holding NaN (a path of its own) beside one without. Values: ties, -0 beside +0
    # (equal: the first one wins), +-inf. The result must be bitwise that of the saved indices.
    shape = (1, planes, h, w)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    x[rng.random(shape) < 0.02] = np.inf
    x[rng.random(shape) < 0.02] = -np.inf
    if planes > 16:
        x[0, 16, h // 2, w // 2] = np.nan  # the second group only
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, size, stride, return_indices=True)
    dy_np = rng.standard_normal(y.shape).astype(np.float32)
    dy = convnet.tensor(dy_np, device)
    without = ops.max_pool_backward(xt, y, dy, size, stride).numpy()
    assert np.array_equal(without, ops.max_pool_backward(xt, y, dy, size, stride, indices=idx).numpy())
    assert_close(without, max_pool_backward_ref(x, dy_np, size, stride), 1e-6, "max_pool_backward by plane groups")


@pytest.mark.parametrize("planes", [1, 2, 3])
@pytest.mark.parametrize("h,w", [(3, 3), (4, 4), (8, 15), (7, 16), (7, 17), (5, 31), (9, 32), (3, 33), (4, 34),
                                 (5, 35), (3, 63), (3, 64), (4, 65), (3, 66)])
def test_max_pool_backward_3x3_stride_2_rows(device, rng, planes, h, w):
    # AlexNet's window (3, stride 2) has a CPU path of its own (AVX-512): rows of more than 16
    # columns 32 at a time (the last block partial, or holding only column 2Q), rows of 16 or
    # fewer two planes at a time (an odd plane count leaves one alone), an even height's last row
    # in no window. Values: ties, -0 beside +0, +-inf, NaN in the last plane only, and maxima at
    # even (row, column) places, which up to four windows share (so a wrong order of their sum
    # shows). dy: +-0 only; small integers; normal values. Bitwise a float32 scatter in row-major
    # window order, both from x and from the saved indices (the same path on the CPU).
    shape = (1, planes, h, w)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    x[rng.random(shape) < 0.03] = np.inf
    x[rng.random(shape) < 0.03] = -np.inf
    x[:, :, ::2, ::2][rng.random(x[:, :, ::2, ::2].shape) < 0.3] = 10
    if planes == 3:
        x[0, 2, rng.integers(h), rng.integers(w)] = np.nan
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, 3, 2, return_indices=True)
    for dy_np in (rng.integers(-2, 3, y.shape).astype(np.float32) * np.float32(-0.0),  # every one +-0
                  rng.integers(-3, 4, y.shape).astype(np.float32),
                  rng.standard_normal(y.shape).astype(np.float32)):
        dy = convnet.tensor(dy_np, device)
        without = ops.max_pool_backward(xt, y, dy, 3, 2).numpy()
        with_idx = ops.max_pool_backward(xt, y, dy, 3, 2, indices=idx).numpy()
        want = scatter_indices_ref(max_pool_indices_ref(x, 3, 2), dy_np, shape, 3, 2, np.float32)
        assert np.array_equal(without.view(np.uint32), want.view(np.uint32))  # -0 and +0 differ here
        assert np.array_equal(with_idx.view(np.uint32), want.view(np.uint32))
        assert_close(without, max_pool_backward_ref(x, dy_np, 3, 2), 1e-6, "max_pool_backward 3/2 by rows")


def test_max_pool_indices_match_torch(device, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)  # no ties: torch's choice is unique
    _, idx = ops.max_pool(convnet.tensor(x, device), 3, 2, return_indices=True)
    _, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, return_indices=True)
    assert np.array_equal(idx.numpy(), tidx.numpy())  # the same convention: h * W + w in the plane


def _bad_indices_refused_or_dropped(xt, y, dy, bad, device, count):
    """Indices outside their window (or the plane) are never followed: the CPU raises, naming how
    many; a GPU drops their dy. Returns the reference dx without them."""
    want = scatter_indices_ref(bad, dy.numpy(), xt.shape, 3, 2)
    if device == "cpu":
        with pytest.raises(ValueError, match=f"max_pool_backward: {count} of the indices are not inside their windows"):
            ops.max_pool_backward(xt, y, dy, 3, 2, indices=convnet.tensor(bad, device))
    else:
        dx = ops.max_pool_backward(xt, y, dy, 3, 2, indices=convnet.tensor(bad, device)).numpy()
        assert_close(dx, want, 1e-6, "max_pool_backward(bad indices)")
    return want


def test_max_pool_bad_indices(device, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, 3, 2, return_indices=True)  # (2, 3, 4, 4)
    dy = convnet.tensor(rng.standard_normal(y.shape), device)
    with pytest.raises(TypeError, match="max_pool_backward: 'indices' must be int32"):
        ops.max_pool_backward(xt, y, dy, 3, 2, indices=y)
    with pytest.raises(ValueError, match="max_pool_backward: 'indices' must have shape"):
        ops.max_pool_backward(xt, y, dy, 3, 2, indices=convnet.tensor(np.zeros((2, 3, 4, 3), np.int32), device))
    with pytest.raises(ValueError, match="max_pool_backward: 'y' may be None only when 'indices' are given"):
        ops.max_pool_backward(xt, None, dy, 3, 2)
    other = "cpu" if device != "cpu" else ("cuda:0" if convnet.cuda_available() else None)
    if other is not None:
        with pytest.raises(ValueError, match="max_pool_backward: 'x' is on"):
            ops.max_pool_backward(xt, y, dy, 3, 2, indices=idx.to(other))
    bad = idx.numpy().copy()
    bad[0, 0, 0, 0] = -1
    bad[0, 1, 1, 1] = 10**9
    bad[1, 2, 3, 3] = 0  # inside the plane, outside its window
    want = _bad_indices_refused_or_dropped(xt, y, dy, bad, device, 3)
    assert want[0, 0].sum() != 0 and want[1, 2, 7:, 7:].sum() == 0  # the reference dropped just those


@pytest.mark.parametrize("h,w", [(7, 21), (9, 40), (8, 13)])
def test_max_pool_bad_indices_3x3_stride_2(device, rng, h, w):
    # The CPU's AVX-512 path for 3x3 windows at stride 2 checks an index against its own window's
    # nine offsets: just right of the window, a row below it, another window's element, far off.
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, 3, 2, return_indices=True)
    dy = convnet.tensor(rng.standard_normal(y.shape), device)
    p, q = y.shape[2:]
    bad = idx.numpy().copy()
    bad[0, 0, 0, q - 1] = 2 * (q - 1) + 3           # row 0, one column past the window
    bad[1, 1, p - 1, 0] = (2 * (p - 1) + 3) * w     # one row below
    bad[1, 2, p - 1, q - 1] = idx.numpy()[1, 2, 0, 0]  # the first window's element
    bad[0, 2, 0, 0] = -(2**31)
    _bad_indices_refused_or_dropped(xt, y, dy, bad, device, 4)
    good = ops.max_pool_backward(xt, y, dy, 3, 2, indices=idx).numpy()  # and the rest as ever
    assert_close(good, max_pool_backward_ref(x, dy.numpy(), 3, 2), 1e-6, "max_pool_backward(indices)")


def test_max_pool_indices_devices_agree_bitwise(device, rng):
    if device == "cpu":
        pytest.skip("compares a GPU against the CPU")
    x = rng.integers(0, 5, (2, 16, 27, 27)).astype(np.float32)  # many ties
    out = {}
    for dev in ("cpu", device):
        y, idx = ops.max_pool(convnet.tensor(x, dev), 3, 2, return_indices=True)
        dy = convnet.tensor(np.random.default_rng(1).standard_normal(y.shape), dev)
        out[dev] = (idx.numpy(), ops.max_pool_backward(convnet.tensor(x, dev), None, dy, 3, 2, indices=idx).numpy())
    assert np.array_equal(out["cpu"][0], out[device][0])
    assert np.array_equal(out["cpu"][1], out[device][1])


# Large planes (120 x 110: a block's thread rows cover only part of a plane; 2/1's gather has 110
# columns): 3/2 and a runtime window, against the references and bit for bit against the CPU.
@pytest.mark.parametrize("size,stride", [(3, 2), (2, 1)])
def test_max_pool_large_planes(device, rng, size, stride):
    x = rng.integers(0, 7, (1, 2, 120, 110)).astype(np.float32)  # ties
    xt = convnet.tensor(x, device)
    y, idx = ops.max_pool(xt, size, stride, return_indices=True)
    np.testing.assert_array_equal(y.numpy(), max_pool_ref(x, size, stride))
    np.testing.assert_array_equal(idx.numpy(), max_pool_indices_ref(x, size, stride))
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.max_pool_backward(xt, y, convnet.tensor(g, device), size, stride).numpy()
    dxi = ops.max_pool_backward(xt, None, convnet.tensor(g, device), size, stride, indices=idx).numpy()
    assert_close(dx, max_pool_backward_ref(x, g, size, stride), 1e-6, "max_pool_backward")
    want = ops.max_pool_backward(convnet.tensor(x), None, convnet.tensor(g), size, stride,
                                 indices=convnet.tensor(idx.numpy())).numpy()
    assert np.array_equal(dx, want) and np.array_equal(dxi, want)


def test_maxpool_layer_keeps_indices_not_y(device, rng):
    from convnet.layers import MaxPool
    layer = MaxPool({"name": "pool", "inputs": ["x"], "size": 3, "stride": 2})
    layer.out_shape([(4, 9, 9)])
    layer._split = [4]
    x = rng.integers(0, 4, (2, 4, 9, 9)).astype(np.float32)  # ties
    xt = convnet.tensor(x, device)
    y = layer.forward([xt], train=True)
    assert layer._saved_indices is not None and getattr(layer, "_saved_y", None) is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (dx,) = layer.backward(convnet.tensor(dy, device))
    assert_close(dx.numpy(), max_pool_backward_ref(x, dy, 3, 2), 1e-6, "MaxPool layer backward")
    layer.forward([xt], train=False)  # evaluation keeps nothing for a backward
    assert layer._saved_indices is None and layer._saved_x is None


# Planes past the CPU's lane budget (sixteen planes' x and dx a thread, 64 MB: past ~724x724 they go
# one at a time through their saved-index form), with overlapping windows (5/4, 7/5: few windows, for
# the Python reference): against the reference's float32 sums from the reference's indices, bit for
# bit (the lanes path's bits, which the tests of smaller planes pin to the same reference).
@pytest.mark.parametrize("size,stride", [(5, 4), (7, 5)])
def test_max_pool_backward_planes_past_the_lane_budget(device, rng, size, stride):
    x = rng.integers(0, 9, (1, 2, 731, 737)).astype(np.float32)  # ties
    xt = convnet.tensor(x, device)
    y = ops.max_pool(xt, size, stride)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.max_pool_backward(xt, y, convnet.tensor(g, device), size, stride).numpy()
    want = scatter_indices_ref(max_pool_indices_ref(x, size, stride), g, x.shape, size, stride, dtype=np.float32)
    np.testing.assert_array_equal(dx, want)


def test_max_pool_scratch_memory_is_bounded():
    # The CPU twin's scratch, measured as peak resident memory in a fresh process with two threads:
    # the backward without indices of one 2048x2048 plane (the lanes took 512 MB a thread), and
    # indices at a stride of 2^21 (a phase buffer a stride long took 268 MB a thread).
    code = """
import resource
import numpy as np
import convnet
from convnet import ops
def grown(f):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # MB
x = convnet.tensor(np.random.default_rng(0).standard_normal((1, 1, 2048, 2048)).astype(np.float32))
y = ops.max_pool(x, 2, 2)
a = grown(lambda: ops.max_pool_backward(x, y, y, 2, 2))  # its 16 MB dx included
w = convnet.tensor(np.random.default_rng(1).standard_normal((1, 1, 1, 1 << 22)).astype(np.float32))
b = grown(lambda: ops.max_pool(w, 1, 1 << 21, return_indices=True))
print(a, b)
"""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    backward_mb, indices_mb = map(float, out.stdout.split())
    assert backward_mb < 80 and indices_mb < 40, out.stdout
