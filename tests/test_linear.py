import numpy as np
import pytest

import convnet
from convnet import ops

import ref_conv as ref
from reference import assert_close, digests_by_thread_count, numeric_grad

TOL = 1e-4


def test_reference_gradient(rng):
    """The reference's backward against finite differences of its forward."""
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    dx, dw, db = ref.linear_backward(x, w, dy)
    assert_close(dx, numeric_grad(lambda v: ref.linear(v, w, b) * dy, x), 1e-6, "dx")
    assert_close(dw, numeric_grad(lambda v: ref.linear(x, v, b) * dy, w), 1e-6, "dw")
    assert_close(db, numeric_grad(lambda v: ref.linear(x, w, v) * dy, b), 1e-6, "db")


# (n, in, out): batch 1, odd sizes, sizes past the GEMM's k-block (256) and row block (288 on AVX-512)
SHAPES = [(1, 1, 1), (1, 37, 5), (2, 3, 700), (3, 700, 29), (13, 257, 1001), (37, 300, 70), (1, 1030, 17),
          (128, 64, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(device, rng, shape, bias):
    n, i, o = shape
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    dy = rng.standard_normal((n, o)).astype(np.float32)
    X, W = convnet.tensor(x, device), convnet.tensor(w, device)
    y = ops.linear(X, W, convnet.tensor(b, device) if bias else None)
    assert y.device == device and y.shape == (n, o)
    assert_close(y.numpy(), ref.linear(x, w, b), TOL, "y")
    dx, dw, db = ops.linear_backward(X, W, convnet.tensor(dy, device))
    rdx, rdw, rdb = ref.linear_backward(x, w, dy)
    assert_close(dx.numpy(), rdx, TOL, "dx")
    assert_close(dw.numpy(), rdw, TOL, "dw")
    assert_close(db.numpy(), rdb, TOL, "db")


# fc8 at full size; fc6's 9216 inputs with fewer outputs (its full 9216 x 4096 float64
# reference alone would take seconds and gigabytes).
@pytest.mark.parametrize("layer", [("fc6 in-features", 9216, 300), ("fc8", 4096, 1000)])
def test_alexnet_layers(device, rng, layer):
    _, i, o = layer
    test_linear(device, rng, (2, i, o), True)


def test_empty_batch(device):
    x = convnet.tensor(np.zeros((0, 5), np.float32), device)
    w = convnet.tensor(np.ones((3, 5), np.float32), device)
    assert ops.linear(x, w).shape == (0, 3)
    dx, dw, db = ops.linear_backward(x, w, convnet.tensor(np.zeros((0, 3), np.float32), device))
    assert dx.shape == (0, 5) and dw.shape == (3, 5) and not dw.numpy().any() and not db.numpy().any()


def test_bad_input(device):
    def t(shape, dtype=np.float32):
        return convnet.tensor(np.ones(shape, dtype), device)

    x, w, b = t((4, 6)), t((3, 6)), t((3,))
    with pytest.raises(ValueError, match=r"linear: 'x' \(4, 7\) has 7 features but 'w' \(3, 6\) expects 6"):
        ops.linear(t((4, 7)), w, b)
    with pytest.raises(ValueError, match="linear: 'x' must have 2 dimensions"):
        ops.linear(t((4, 6, 1)), w, b)
    with pytest.raises(ValueError, match="linear: 'w' must have 2 dimensions"):
        ops.linear(x, t((6,)), b)
    with pytest.raises(TypeError, match="linear: 'x' must be float32"):
        ops.linear(t((4, 6), np.int32), w, b)
    with pytest.raises(TypeError, match="linear: 'w' must be float32"):
        ops.linear(x, t((3, 6), np.uint8), b)
    with pytest.raises(ValueError, match=r"linear: 'b' must have shape \(3,\)"):
        ops.linear(x, w, t((4,)))
    with pytest.raises(ValueError, match="linear: 'w' must have no zero-sized dimension"):
        ops.linear(t((4, 0)), t((3, 0)))
    with pytest.raises(TypeError):
        ops.linear(x, w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"linear_backward: 'dy' must have shape \(4, 3\)"):
        ops.linear_backward(x, w, t((3, 4)))
    with pytest.raises(ValueError, match="linear_backward: 'x' .* has 5 features"):
        ops.linear_backward(t((4, 5)), w, t((4, 3)))
    with pytest.raises(TypeError, match="linear_backward: 'dy' must be float32"):
        ops.linear_backward(x, w, t((4, 3), np.int32))


@pytest.mark.skipif(not convnet.cuda_available(), reason="needs a GPU to mix devices")
def test_wrong_device():
    x = convnet.tensor(np.ones((2, 4), np.float32), "cpu")
    w = convnet.tensor(np.ones((3, 4), np.float32), "cuda:0")
    with pytest.raises(ValueError, match="linear: 'x' is on cpu but 'w' is on cuda:0"):
        ops.linear(x, w)
    with pytest.raises(ValueError, match="linear: 'x' is on cpu but 'b' is on cuda:0"):
        ops.linear(x, w.to("cpu"), convnet.tensor(np.ones(3, np.float32), "cuda:0"))
    with pytest.raises(ValueError, match="linear_backward: 'x' is on cpu but 'dy' is on cuda:0"):
        ops.linear_backward(x, w.to("cpu"), convnet.tensor(np.ones((2, 3), np.float32), "cuda:0"))


def test_cpu_thread_count_independent():
    """CPU forward and backward are bitwise the same with 1, 2, 3 and 5 OpenMP threads: the
    few-rows products (forward and input gradient of a small batch; 33 outputs: a partial column
    strip) and a weight gradient of 69 MB (written past the caches)."""
    code = ("import hashlib, numpy as np, convnet; from convnet import ops\n"
            "h = hashlib.sha256(); r = np.random.default_rng(5); T = convnet.tensor\n"
            "for n, i, o in ((16, 4200, 4100), (5, 300, 33), (40, 70, 90)):\n"
            "    x, w = r.standard_normal((n, i), np.float32), r.standard_normal((o, i), np.float32)\n"
            "    dy = r.standard_normal((n, o), np.float32)\n"
            "    outs = [ops.linear(T(x), T(w))] + list(ops.linear_backward(T(x), T(w), T(dy)))\n"
            "    for t in outs: h.update(t.numpy().tobytes())\n"
            "print(h.hexdigest())")
    digests = digests_by_thread_count(code)
    assert digests == [digests[0]] * 4


def test_large_weight_gradient(rng):
    # a weight gradient larger than the caches (69 MB) is written with streaming stores
    n, i, o = 16, 4200, 4100
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in ((n, i), (o, i), (n, o)))
    dx, dw, db = ops.linear_backward(convnet.tensor(x), convnet.tensor(w), convnet.tensor(dy))
    assert_close(dw.numpy(), dy.T.astype(np.float64) @ x, 1e-5, "dw")
    assert_close(dx.numpy(), dy.astype(np.float64) @ w, 1e-5, "dx")
    assert_close(db.numpy(), dy.astype(np.float64).sum(0), 1e-5, "db")
