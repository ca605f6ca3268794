import ctypes

import numpy as np
import pytest

import convnet
from convnet import ops

from reference import assert_close, numeric_grad
import reference as ref

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4, 5), (1, 96, 55, 55), (1031,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_backward(device, rng, shape):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink for finite differences
    dy = rng.standard_normal(shape)
    y = ops.relu(convnet.tensor(x, device))
    assert y.device == device and y.dtype == "float32" and y.shape == shape
    assert_close(y.numpy(), ref.relu(x.astype(np.float32)), 0)
    dx = ops.relu_backward(y, convnet.tensor(dy, device)).numpy()
    if x.size <= 64:  # the reference's own gradient, by finite differences
        assert_close(numeric_grad(lambda v: ref.relu(v) * dy, x), (x > 0) * dy, 1e-6)
    assert_close(dx, (x > 0) * dy.astype(np.float32), 0)


def test_relu_bad_input(device):
    x = convnet.tensor(np.ones((2, 3), np.float32), device)
    with pytest.raises(TypeError, match="relu: 'x' must be float32"):
        ops.relu(convnet.tensor(np.ones((2, 3), np.int32), device))
    with pytest.raises(ValueError, match="relu_backward: 'dy' must have shape"):
        ops.relu_backward(x, convnet.tensor(np.ones((3, 2), np.float32), device))
    with pytest.raises(TypeError):
        ops.relu(np.ones(3, np.float32))


# ---- dropout ----
# NumPy twin of csrc/kernels/random.h: SplitMix64 read at position i of a stream keyed by
# mix64(seed); element i is kept when its top 24 bits >= ceil(p * 2^24). Asserting the exact
# mask pins the hash, its independence from thread count, and CPU == CUDA.

_M64 = (1 << 64) - 1


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_dropout_mask(shape, p, seed):
    n = int(np.prod(shape))
    key = _mix64(np.array([seed & _M64], dtype=np.uint64))  # arrays: uint64 products wrap silently
    bits = _mix64(key + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    threshold = np.uint64(int(np.ceil(p * 2.0**24)))
    return (bits >= threshold).astype(np.uint8).reshape(shape)


def ref_dropout(x, mask, p):
    return x * mask / (1.0 - p)


DROPOUT_CASES = [((1,), 0.5, 0), ((7,), 0.5, 1), ((3, 5), 0.25, 2**63 - 1), ((2, 3, 4, 5), 0.5, -7),
                 ((5, 4096), 0.5, 12345), ((1031,), 0.9, 99), ((40000,), 0.5, 3)]


@pytest.mark.parametrize("shape,p,seed", DROPOUT_CASES)
def test_dropout_forward_backward(device, rng, shape, p, seed):
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    y, mask = ops.dropout(convnet.tensor(x, device), p, seed)
    assert y.device == device and y.dtype == "float32" and y.shape == shape
    assert mask.device == device and mask.dtype == "uint8" and mask.shape == shape
    want_mask = ref_dropout_mask(shape, p, seed)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    if x.size >= 8:
        assert 0 < want_mask.sum() < x.size  # the case really drops some and keeps some
    assert_close(y.numpy(), ref_dropout(x.astype(np.float32), want_mask, p), 1e-6)
    dx = ops.dropout_backward(convnet.tensor(dy, device), mask, p).numpy()
    if x.size <= 64:  # the reference's own gradient, by finite differences
        assert_close(numeric_grad(lambda v: ref_dropout(v, want_mask, p) * dy, x),
                     want_mask * dy / (1 - p), 1e-6)
    assert_close(dx, ref_dropout(dy.astype(np.float32), want_mask, p), 1e-6)


def test_dropout_seeds(device, rng):
    x = convnet.tensor(rng.standard_normal((64, 100)), device)
    y1, m1 = ops.dropout(x, 0.5, 42)
    y2, m2 = ops.dropout(x, 0.5, 42)
    _, m3 = ops.dropout(x, 0.5, 43)
    np.testing.assert_array_equal(m1.numpy(), m2.numpy())
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert np.mean(m1.numpy() != m3.numpy()) > 0.3  # independent masks differ in ~half the places
    # any 64-bit seed, read as the kernels' uint64: 2**64 - 1 is -1 (was a TypeError of pybind11's)
    np.testing.assert_array_equal(ops.dropout(x, 0.5, 2**64 - 1)[1].numpy(), ops.dropout(x, 0.5, -1)[1].numpy())
    assert ops.dropout(x, 0.5, 2**63)[1].shape == x.shape
    with pytest.raises(ValueError, match="dropout: seed must fit in 64 bits"):
        ops.dropout(x, 0.5, 2**64)
    with pytest.raises(TypeError, match="dropout: seed must be an integer, got 1.5"):
        ops.dropout(x, 0.5, 1.5)  # was truncated to 1
    # seed=None draws a fresh seed each call
    assert np.any(ops.dropout(x)[1].numpy() != ops.dropout(x)[1].numpy())


@pytest.mark.parametrize("p", [0.5, 0.1, 0.8])
def test_dropout_keep_rate(device, p):
    n = 1 << 20
    _, mask = ops.dropout(convnet.tensor(np.ones(n, np.float32), device), p, 2024)
    kept = mask.numpy().mean()
    sigma = np.sqrt(p * (1 - p) / n)
    # A 6-sigma bound: a correct generator fails it about once in 5e8 runs.
    assert abs(kept - (1 - p)) < 6 * sigma, f"kept {kept:.5f}, expected {1 - p} +- {6 * sigma:.5f}"


def test_dropout_p0_keeps_all(device, rng):
    x = rng.standard_normal((3, 1001)).astype(np.float32)
    y, mask = ops.dropout(convnet.tensor(x, device), 0.0, 5)
    assert mask.numpy().all()
    np.testing.assert_array_equal(y.numpy(), x)


def test_dropout_thread_count_independent():
    """The CPU mask is the same with 1 and 2 OpenMP threads (on top of matching the NumPy hash)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np, convnet; from convnet import ops; "
            "m = ops.dropout(convnet.tensor(np.ones(300007, np.float32)), 0.3, 77)[1].numpy(); "
            "print(hashlib.sha256(m.tobytes()).hexdigest())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))  # this convnet, built
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # cwd=root too: `python -c` puts the working directory first on sys.path
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             check=True)
        digests.append(out.stdout.strip())
    want = hashlib.sha256(ref_dropout_mask((300007,), 0.3, 77).tobytes()).hexdigest()
    assert digests == [want, want]


def test_dropout_bad_input(device):
    x = convnet.tensor(np.ones((2, 3), np.float32), device)
    m = convnet.tensor(np.ones((2, 3), np.uint8), device)
    # 1 - 2^-25: below 1, but no 24-bit draw reaches it (all dropped, scaled by 2^25)
    for p in (1.0, 1 - 2**-25, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"dropout: drop probability p must be in \[0, 1 - 2\^-24\]"):
            ops.dropout(x, p, 0)
        with pytest.raises(ValueError, match=r"dropout_backward: drop probability p"):
            ops.dropout_backward(x, m, p)
    with pytest.raises(TypeError, match="dropout: 'x' must be float32"):
        ops.dropout(convnet.tensor(np.ones(3, np.int32), device), 0.5, 0)
    with pytest.raises(TypeError, match="dropout_backward: 'mask' must be uint8"):
        ops.dropout_backward(x, x, 0.5)
    with pytest.raises(ValueError, match="dropout_backward: 'mask' must have shape"):
        ops.dropout_backward(x, convnet.tensor(np.ones((3, 2), np.uint8), device), 0.5)
    if device != "cpu":
        with pytest.raises(ValueError, match="dropout_backward: 'dy' is on cuda:0 but 'mask' is on cpu"):
            ops.dropout_backward(x, convnet.tensor(np.ones((2, 3), np.uint8)), 0.5)


# ---- SGD with momentum and weight decay (the paper's rule) ----

def ref_sgd(w, dw, v, lr, momentum, weight_decay):
    v = momentum * v - weight_decay * lr * w - lr * dw
    return w + v, v


@pytest.mark.parametrize("shape", [(1,), (7,), (96, 3, 11, 11), (1031,), (5, 4, 3)])
def test_sgd_update_steps(device, rng, shape):
    # Each step against the float64 rule applied to the kernel's own previous state, the error
    # measured against the size of the terms combined: w + v can cancel to near 0 (a lone element
    # then shows a large error relative to itself from float32 rounding alone).
    lr, momentum, weight_decay = 0.01, 0.9, 5e-4
    w = convnet.tensor(rng.standard_normal(shape), device)
    v = convnet.tensor(0.1 * rng.standard_normal(shape), device)
    for step in range(4):
        w_prev, v_prev = w.numpy().astype(np.float64), v.numpy().astype(np.float64)
        dw64 = rng.standard_normal(shape).astype(np.float32).astype(np.float64)
        assert ops.sgd_update(w, convnet.tensor(dw64, device), v, lr, momentum, weight_decay) is None
        w_ref, v_ref = ref_sgd(w_prev, dw64, v_prev, lr, momentum, weight_decay)
        terms_v = max(np.abs(momentum * v_prev).max(), np.abs(lr * dw64).max(), np.abs(weight_decay * lr * w_prev).max())
        terms_w = max(np.abs(w_prev).max(), np.abs(v_ref).max(), terms_v)
        err_v = np.abs(v.numpy() - v_ref).max() / terms_v
        err_w = np.abs(w.numpy() - w_ref).max() / terms_w
        assert err_v <= 1e-6 and err_w <= 2e-6, f"step {step}: error v {err_v:.3g}, w {err_w:.3g} (float32: ~1e-7)"
    assert w.device == device and w.shape == shape


def test_sgd_weight_decay_is_l2_gradient(rng):
    """The reference's decay term is lr times the gradient of the L2 penalty (wd/2)*|w|^2."""
    w = rng.standard_normal(6)
    lr, wd = 0.1, 0.05
    _, v = ref_sgd(w, np.zeros(6), np.zeros(6), lr, 0.0, wd)
    assert_close(-v, lr * numeric_grad(lambda u: 0.5 * wd * np.sum(u * u), w), 1e-7)


def test_sgd_update_bad_input(device):
    def t(shape, dtype=np.float32, dev=device):
        return convnet.tensor(np.ones(shape, dtype), dev)

    w = t((4, 3))
    with pytest.raises(ValueError, match=r"sgd_update: 'dw' must have shape \(4, 3\)"):
        ops.sgd_update(w, t((3, 4)), t((4, 3)), 0.01)
    with pytest.raises(ValueError, match=r"sgd_update: 'v' must have shape \(4, 3\)"):
        ops.sgd_update(w, t((4, 3)), t((12,)), 0.01)
    with pytest.raises(TypeError, match="sgd_update: 'dw' must be float32"):
        ops.sgd_update(w, t((4, 3), np.int32), t((4, 3)), 0.01)
    with pytest.raises(ValueError, match="sgd_update: 'w' and 'v' share memory"):
        ops.sgd_update(w, t((4, 3)), w, 0.01)
    with pytest.raises(ValueError, match="sgd_update: 'w' and 'dw' share memory"):
        ops.sgd_update(w, w.reshape([12]).reshape([4, 3]), t((4, 3)), 0.01)
    # the same memory under another tensor object (a DLPack import) or overlapping views of one buffer
    with pytest.raises(ValueError, match="sgd_update: 'w' and 'v' share memory"):
        ops.sgd_update(w, t((4, 3)), convnet.from_dlpack(w), 0.01)
    torch = pytest.importorskip("torch")
    if device == "cpu":
        buf = torch.ones(20)
        with pytest.raises(ValueError, match="sgd_update: 'dw' and 'v' share memory"):
            ops.sgd_update(w, convnet.from_dlpack(buf[:12].view(4, 3)), convnet.from_dlpack(buf[8:].view(4, 3)), 0.01)
    for lr, momentum, wd in [(float("nan"), 0.9, 5e-4), (0.01, float("inf"), 5e-4), (0.01, 0.9, 1e39)]:
        with pytest.raises(ValueError, match="sgd_update: lr, momentum and weight_decay must be finite"):
            ops.sgd_update(w, t((4, 3)), t((4, 3)), lr, momentum=momentum, weight_decay=wd)
    np.testing.assert_array_equal(w.numpy(), np.ones((4, 3), np.float32))  # refused calls left w alone
    if device != "cpu":
        with pytest.raises(ValueError, match="sgd_update: 'w' is on cuda:0 but 'v' is on cpu"):
            ops.sgd_update(w, t((4, 3)), t((4, 3), dev="cpu"), 0.01)


def test_relu_passes_nan_through(device):
    """A NaN must reach the loss (bad weights show up there), as in PyTorch: relu(NaN) = NaN."""
    x = np.array([np.nan, -1.0, 2.0, -np.inf, np.inf, np.nan, 0.5, -0.5, np.nan], np.float32)
    y = ops.relu(convnet.tensor(x, device)).numpy()
    assert np.isnan(y[[0, 5, 8]]).all()
    np.testing.assert_array_equal(y[[1, 2, 3, 4, 6, 7]], [0, 2, 0, np.inf, 0.5, 0])


def test_number_and_flag_arguments_refuse_strings_and_bools():
    # float() and bool() took these without a word: "False" as True, "0.5" as 0.5, True as 1.0
    x = convnet.tensor(np.ones((2, 3, 5, 5), np.float32))
    for call, match in [(lambda: ops.dropout(x, p="0.5", seed=0), "dropout: p must be a number, got '0.5'"),
                        (lambda: ops.dropout(x, p=False, seed=0), "dropout: p must be a number, got False"),
                        (lambda: ops.lrn(x, alpha="1e-4"), "lrn: alpha must be a number"),
                        (lambda: ops.sgd_update(x, x.reshape([150]).reshape([2, 3, 5, 5]), x, "0.1"),
                         "sgd_update: lr must be a number"),
                        (lambda: ops.max_pool(x, return_indices="False"),
                         "max_pool: return_indices must be True or False, got 'False'"),
                        (lambda: convnet.empty([2], pinned="False"), "empty: pinned must be True or False"),
                        (lambda: ops.dropout(x, p=bytearray(b"0.5"), seed=0), "dropout: p must be a number"),
                        (lambda: ops.dropout(x, p=np.array(True), seed=0), "dropout: p must be a number"),
                        (lambda: ops.dropout(x, p=np.complex128(0.5 + 1j), seed=0), "dropout: p must be a number"),
                        (lambda: ops.dropout(x, p=np.array([0.5]), seed=0), "dropout: p must be a number")]:
        with pytest.raises(TypeError, match=match):
            call()
    # NumPy numbers and 0-d arrays are numbers; NumPy bools are flags
    y, mask = ops.dropout(x, p=np.float32(0.5), seed=np.int64(3))
    assert ops.dropout(x, p=np.array(0.5), seed=3)[1].numpy().tolist() == mask.numpy().tolist()
    assert isinstance(ops.max_pool(x, return_indices=np.bool_(True)), tuple)


def _offset_view(values, offset, device):
    """A tensor holding `values` that starts `offset` elements into a larger buffer, as a DLPack
    import of a slice would (a parameter cut out of a flat buffer): our own export of the buffer,
    its DLTensor's shape and byte_offset patched before the import."""
    buf = convnet.tensor(np.concatenate([np.zeros(offset, values.dtype), values, np.zeros(8, values.dtype)]), device)
    capsule = buf.__dlpack__(max_version=(1, 0))
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    managed = get(capsule, b"dltensor_versioned")
    # DLManagedTensorVersioned: version, manager_ctx, deleter, flags (8 bytes each), then the DLTensor:
    # data, device, ndim + dtype, shape, strides, byte_offset
    tensor = managed + 32
    shape = ctypes.c_void_p.from_address(tensor + 24).value
    ctypes.c_int64.from_address(shape).value = len(values)
    ctypes.c_uint64.from_address(tensor + 40).value = offset * values.itemsize
    return convnet._C.from_dlpack_capsule(capsule)


def test_elementwise_inputs_off_alignment(device, rng):
    # DLPack imports may start anywhere (a parameter sliced out of a flat buffer): the CUDA kernels
    # read float4 / uchar4, and a misaligned one is a fatal CUDA error; they take a scalar loop
    n = 1001

    def at(values, offset):
        t = _offset_view(values, offset, device)
        assert t.data_ptr() % 16 and t.numpy().tolist() == values.tolist()
        return t

    x = rng.standard_normal(n).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    xt, dyt = at(x, 1), at(dy, 3)
    assert xt.data_ptr() % 16 and dyt.data_ptr() % 16
    np.testing.assert_array_equal(ops.relu(xt).numpy(), np.maximum(x, 0))
    np.testing.assert_array_equal(ops.relu_backward(xt, dyt).numpy(), np.where(x > 0, dy, 0))
    y, mask = ops.dropout(xt, 0.3, seed=5)
    want_y, want_mask = ops.dropout(convnet.tensor(x, device), 0.3, seed=5)  # aligned: the vector path
    np.testing.assert_array_equal(y.numpy(), want_y.numpy())
    np.testing.assert_array_equal(mask.numpy(), want_mask.numpy())
    m = at(mask.numpy(), 1)
    np.testing.assert_array_equal(ops.dropout_backward(dyt, m, 0.3).numpy(),
                                  ops.dropout_backward(convnet.tensor(dy, device), mask, 0.3).numpy())
    w, v = at(x, 2), at(dy, 1)
    ops.sgd_update(w, dyt, v, 0.1)
    v_want = 0.9 * dy - 5e-4 * 0.1 * x - 0.1 * dy
    np.testing.assert_allclose(v.numpy(), v_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.numpy(), x + v_want, rtol=1e-5, atol=1e-6)
