import numpy as np
import pytest

import convnet
from convnet import ops

import ref_conv as ref
from reference import assert_close, digests_by_thread_count, numeric_grad

TOL = 1e-4


def run_conv(device, rng, n, c, h, w, k, r, s, stride, pad, groups, bias=True, backward=True):
    """Forward (and backward) of ours against the float64 reference; stride/pad are pairs."""
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c // groups, r, s)) / np.sqrt(c // groups * r * s)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    X, W = convnet.tensor(x, device), convnet.tensor(wt, device)
    B = convnet.tensor(b, device) if bias else None
    y = ops.conv2d(X, W, B, stride=stride, padding=pad, groups=groups)
    p, q = ref.conv_out_size(h, w, r, s, stride, pad)
    assert y.device == device and y.shape == (n, k, p, q)
    assert_close(y.numpy(), ref.conv2d(x, wt, b, stride, pad, groups), TOL, "y")
    if not backward:
        return
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    dx, dw, db = ops.conv2d_backward(X, W, convnet.tensor(dy, device), stride=stride, padding=pad, groups=groups)
    rdx, rdw, rdb = ref.conv2d_backward(x, wt, dy, stride, pad, groups)
    assert dx.shape == x.shape and dw.shape == wt.shape and db.shape == (k,)
    assert_close(dx.numpy(), rdx, TOL, "dx")
    assert_close(dw.numpy(), rdw, TOL, "dw")
    assert_close(db.numpy(), rdb, TOL, "db")


@pytest.mark.parametrize("stride,pad,groups", [((1, 1), (0, 0), 1), ((2, 1), (1, 2), 2), ((1, 3), (2, 0), 3)])
def test_reference_gradient(rng, stride, pad, groups):
    """The reference's backward against finite differences of its forward."""
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal((3 * groups, 6 // groups, 3, 2))
    b = rng.standard_normal(3 * groups)
    dy = rng.standard_normal(ref.conv2d(x, w, b, stride, pad, groups).shape)
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad, groups)
    assert_close(dx, numeric_grad(lambda v: ref.conv2d(v, w, b, stride, pad, groups) * dy, x), 1e-6, "dx")
    assert_close(dw, numeric_grad(lambda v: ref.conv2d(x, v, b, stride, pad, groups) * dy, w), 1e-6, "dw")
    assert_close(db, numeric_grad(lambda v: ref.conv2d(x, w, v, stride, pad, groups) * dy, b), 1e-6, "db")


# AlexNet's conv layers (groups as in the one-device net): n, c, h, k, r, stride, pad, groups.
ALEXNET = {
    "conv1": (1, 3, 224, 96, 11, 4, 2, 1),
    "conv2": (2, 96, 27, 256, 5, 1, 2, 2),
    "conv3": (2, 256, 13, 384, 3, 1, 1, 1),
    "conv4": (1, 384, 13, 384, 3, 1, 1, 2),
    "conv5": (2, 384, 13, 256, 3, 1, 1, 2),
}


@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_layers(device, rng, layer):
    n, c, h, k, r, st, pd, g = ALEXNET[layer]
    run_conv(device, rng, n, c, h, h, k, r, r, (st, st), (pd, pd), g)


def test_conv1_reduced_batch2(device, rng):
    # conv1's kernel, stride and padding on a smaller image, batch 2 (55 -> 13 outputs).
    run_conv(device, rng, 2, 3, 55, 55, 96, 11, 11, (4, 4), (2, 2), 1)


def random_case(seed):
    g = np.random.default_rng(seed)
    r, s = int(g.integers(1, 12)), int(g.integers(1, 12))
    if seed % 3 == 0:
        s = r  # square kernels too
    stride = (int(g.integers(1, 5)), int(g.integers(1, 5)))
    pad = (int(g.integers(0, 4)), int(g.integers(0, 4)))
    kind = seed % 4
    if kind == 3:  # depthwise
        c = int(g.integers(1, 12))
        k, groups = c, c
    else:
        groups = (1, 2, 3)[kind]
        c = groups * int(g.integers(1, 8))
        k = groups * int(g.integers(1, 8))
    # input at least as large as the kernel after padding, sometimes exactly (output size 1)
    h = max(1, r - 2 * pad[0]) + (0 if seed % 5 == 0 else int(g.integers(0, 18)))
    w = max(1, s - 2 * pad[1]) + (0 if seed % 5 == 0 else int(g.integers(0, 18)))
    n = 1 if seed % 2 else 2
    return n, c, h, w, k, r, s, stride, pad, groups


@pytest.mark.parametrize("seed", range(24))
def test_random_shapes(device, rng, seed):
    n, c, h, w, k, r, s, stride, pad, groups = random_case(seed)
    run_conv(device, rng, n, c, h, w, k, r, s, stride, pad, groups, bias=seed % 3 != 1)


@pytest.mark.parametrize("case", [
    # n, c, h, w, k, r, s, stride, pad, groups
    (2, 7, 9, 11, 5, 1, 1, (1, 1), (0, 0), 1),      # pointwise: no im2col
    (1, 6, 5, 3, 9, 1, 1, (1, 1), (0, 0), 3),       # pointwise, grouped
    (3, 5, 8, 8, 13, 1, 1, (2, 2), (0, 0), 1),      # 1x1 strided
    (1, 4, 6, 6, 4, 6, 6, (1, 1), (0, 0), 1),       # output 1x1, kernel == input
    (1, 3, 1, 1, 5, 3, 3, (1, 1), (1, 1), 1),       # 1x1 input, all padding
    (2, 2, 7, 30, 3, 3, 1, (1, 2), (0, 3), 1),      # non-square everything
    (1, 37, 17, 17, 45, 3, 3, (1, 1), (1, 1), 1),   # channels not multiples of any tile
    (2, 16, 12, 12, 16, 5, 5, (2, 2), (2, 2), 16),  # depthwise
    (3, 4, 14, 14, 6, 3, 3, (1, 1), (1, 1), 2),     # images gathered 2 + 1 along the GEMM's columns
    (7, 3, 9, 9, 20, 1, 1, (1, 1), (0, 0), 1),      # pointwise, images gathered 4 + 3
    (5, 6, 20, 20, 20, 3, 3, (1, 1), (1, 1), 1),    # one image per GEMM
    (1, 2, 70, 70, 3, 3, 3, (2, 2), (1, 1), 1),     # stride 2 (vector strided copy), 2 bands of output rows
    (2, 3, 211, 97, 5, 11, 11, (4, 4), (2, 2), 1),  # stride 4, forward in 2 bands of 26 rows, 23 wide
    (1, 2, 40, 150, 3, 3, 5, (1, 4), (1, 2), 1),    # stride (1, 4), 2 bands
    (3, 2, 19, 11, 4, 3, 3, (3, 1), (1, 2), 1),     # rows under 16 wide copied as whole chunks, stride (3, 1)
    (3, 1, 10, 1, 4, 7, 4, (4, 1), (1, 4), 1),      # an image's part of a col row under one chunk
])
def test_edge_shapes(device, rng, case):
    run_conv(device, rng, *case)


def test_depthwise_weights_counted_per_group(device, rng):
    # The CUDA size check counted the weights as K*C*R*S (here 2.4e9, past 32-bit indexing) for a
    # tensor of K*(C/groups)*R*S (590k): a conv with many groups was refused as too large
    run_conv(device, rng, 1, 4096, 12, 12, 4096, 12, 12, (1, 1), (0, 0), 4096)


@pytest.mark.parametrize("stride", [(65536, 65536), (641, 6700417), (3, 40), (1000, 1)])
@pytest.mark.parametrize("groups", [1, 2])
def test_strides_past_the_image(device, rng, stride, groups):
    # strides whose product wrapped the CUDA phase count (65536 x 65536 -> 0 phases: dx returned
    # unwritten; 641 x 6700417 -> 1), with more than 16 channels a group (the phase path)
    run_conv(device, rng, 2, 34 * groups, 5, 6, 3 * groups, 3, 3, stride, (1, 1), groups)


def test_stride_padding_as_pairs_and_ints(device, rng):
    x = convnet.tensor(rng.standard_normal((1, 2, 9, 9)), device)
    w = convnet.tensor(rng.standard_normal((3, 2, 3, 3)), device)
    a = ops.conv2d(x, w, None, stride=2, padding=1).numpy()
    b = ops.conv2d(x, w, None, stride=(2, 2), padding=[1, 1]).numpy()
    assert_close(a, b, 0)


def test_deterministic(device, rng):
    x = convnet.tensor(rng.standard_normal((3, 8, 15, 15)), device)
    w = convnet.tensor(rng.standard_normal((12, 4, 3, 3)), device)
    dy = convnet.tensor(rng.standard_normal((3, 12, 15, 15)), device)
    first = [t.numpy().copy() for t in ops.conv2d_backward(x, w, dy, 1, 1, 2)]
    second = [t.numpy() for t in ops.conv2d_backward(x, w, dy, 1, 1, 2)]
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_empty_batch(device):
    x = convnet.tensor(np.zeros((0, 4, 5, 5), np.float32), device)
    w = convnet.tensor(np.ones((6, 2, 3, 3), np.float32), device)
    assert ops.conv2d(x, w, None, 1, 0, 2).shape == (0, 6, 3, 3)
    dx, dw, db = ops.conv2d_backward(x, w, convnet.tensor(np.zeros((0, 6, 3, 3), np.float32), device), 1, 0, 2)
    assert dx.shape == (0, 4, 5, 5) and not dw.numpy().any() and not db.numpy().any()


def test_bad_input(device):
    def t(shape, dtype=np.float32):
        return convnet.tensor(np.ones(shape, dtype), device)

    x, w, b = t((2, 4, 8, 8)), t((6, 2, 3, 3)), t((6,))
    dy = t((2, 6, 6, 6))
    with pytest.raises(TypeError, match="conv2d: 'x' must be float32"):
        ops.conv2d(t((2, 4, 8, 8), np.int32), w, b, groups=2)
    with pytest.raises(TypeError, match="conv2d: 'w' must be float32"):
        ops.conv2d(x, t((6, 2, 3, 3), np.uint8), b, groups=2)
    with pytest.raises(ValueError, match="conv2d: 'x' must have 4 dimensions"):
        ops.conv2d(t((4, 8, 8)), w, b, groups=2)
    with pytest.raises(ValueError, match="conv2d: 'w' must have 4 dimensions"):
        ops.conv2d(x, t((6, 2, 9)), b, groups=2)
    with pytest.raises(ValueError, match="conv2d: 'x' .* has 4 channels but 'w' .* expects 2"):
        ops.conv2d(x, w, b, groups=1)
    with pytest.raises(ValueError, match="conv2d: groups=3 must divide"):
        ops.conv2d(t((2, 6, 8, 8)), t((8, 2, 3, 3)), None, groups=3)
    with pytest.raises(ValueError, match="conv2d: groups must be >= 1"):
        ops.conv2d(x, w, b, groups=0)
    with pytest.raises(ValueError, match="conv2d: kernel 9x9 is larger than the padded input 8x8"):
        ops.conv2d(x, t((6, 2, 9, 9)), b, groups=2)
    with pytest.raises(ValueError, match="conv2d: kernel 3x11 is larger than the padded input 10x10"):
        ops.conv2d(x, t((6, 2, 3, 11)), b, padding=1, groups=2)
    with pytest.raises(ValueError, match="conv2d: stride must be >= 1"):
        ops.conv2d(x, w, b, stride=(1, 0), groups=2)
    with pytest.raises(ValueError, match="conv2d: padding must be >= 0"):
        ops.conv2d(x, w, b, padding=-1, groups=2)
    with pytest.raises(ValueError, match="conv2d: 'b' must have shape \\(6,\\)"):
        ops.conv2d(x, w, t((5,)), groups=2)
    with pytest.raises(TypeError, match="conv2d: 'b' must be float32"):
        ops.conv2d(x, w, t((6,), np.int32), groups=2)
    with pytest.raises(ValueError, match="conv2d: 'w' must have no zero-sized dimension"):
        ops.conv2d(x, t((0, 2, 3, 3)), None, groups=2)
    with pytest.raises(TypeError):  # not a Tensor
        ops.conv2d(np.ones((2, 4, 8, 8), np.float32), w, b, groups=2)
    with pytest.raises(ValueError, match="must be an int or a pair"):
        ops.conv2d(x, w, b, stride=(1, 1, 1), groups=2)
    # int() turned 1.5 into 1 and 2.0 into 2 without a word
    for bad, match in [(dict(stride=1.5, groups=2), "conv2d: stride must be an integer, got 1.5"),
                       (dict(padding=(1, "1"), groups=2), "conv2d: padding must be an integer, got '1'"),
                       (dict(groups=2.0), "conv2d: groups must be an integer, got 2.0"),
                       (dict(stride=None, groups=2), "conv2d: stride must be an integer, got None")]:
        with pytest.raises(TypeError, match=match):
            ops.conv2d(x, w, b, **bad)
    with pytest.raises(TypeError, match="conv2d_backward: groups must be an integer"):
        ops.conv2d_backward(x, w, dy, groups=True)
    with pytest.raises(ValueError, match="conv2d_backward: 'dy' must have shape \\(2, 6, 6, 6\\)"):
        ops.conv2d_backward(x, w, t((2, 6, 8, 8)), groups=2)
    with pytest.raises(TypeError, match="conv2d_backward: 'dy' must be float32"):
        ops.conv2d_backward(x, w, t((2, 6, 6, 6), np.int32), groups=2)
    with pytest.raises(ValueError, match="conv2d_backward: kernel 9x9 is larger"):
        ops.conv2d_backward(x, t((6, 2, 9, 9)), dy, groups=2)
    with pytest.raises(ValueError, match="conv2d_backward: groups=4 must divide"):
        ops.conv2d_backward(x, t((6, 1, 3, 3)), dy, groups=4)


@pytest.mark.skipif(not convnet.cuda_available(), reason="needs a GPU to mix devices")
def test_wrong_device():
    x = convnet.tensor(np.ones((1, 2, 5, 5), np.float32), "cpu")
    w = convnet.tensor(np.ones((3, 2, 3, 3), np.float32), "cuda:0")
    b = convnet.tensor(np.ones(3, np.float32), "cuda:0")
    with pytest.raises(ValueError, match="conv2d: 'x' is on cpu but 'w' is on cuda:0"):
        ops.conv2d(x, w, b)
    with pytest.raises(ValueError, match="conv2d: 'x' is on cpu but 'b' is on cuda:0"):
        ops.conv2d(x, w.to("cpu"), b)
    with pytest.raises(ValueError, match="conv2d_backward: 'x' is on cpu but 'dy' is on cuda:0"):
        ops.conv2d_backward(x, w.to("cpu"), convnet.tensor(np.ones((1, 3, 3, 3), np.float32), "cuda:0"))


def test_backward_parts_can_be_skipped(device, rng):
    """input_grad=False / weight_grad=False return None for the skipped gradients and the
    same values as the full call for the others."""
    x = rng.standard_normal((2, 5, 11, 9)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)  # (11 + 2 - 3) // 2 + 1 = 6 rows
    X, W, DY = (convnet.tensor(a, device) for a in (x, w, dy))
    dx, dw, db = ops.conv2d_backward(X, W, DY, stride=2, padding=(1, 0))
    only_dx = ops.conv2d_backward(X, W, DY, stride=2, padding=(1, 0), weight_grad=False)
    only_dw = ops.conv2d_backward(X, W, DY, stride=2, padding=(1, 0), input_grad=False)
    assert only_dx[1] is None and only_dx[2] is None and only_dw[0] is None
    np.testing.assert_array_equal(only_dx[0].numpy(), dx.numpy())
    np.testing.assert_array_equal(only_dw[1].numpy(), dw.numpy())
    np.testing.assert_array_equal(only_dw[2].numpy(), db.numpy())
    assert np.isfinite(dx.numpy()).all() and np.isfinite(dw.numpy()).all()


def test_cpu_thread_count_independent():
    """CPU forward and both gradients are bitwise the same with 1, 2, 3 and 5 OpenMP threads: items
    shared out among threads (chunks of several images, groups) or one after another with the
    threads inside the GEMM (more threads than items), with the weights packed once per call;
    the last shape runs one image at a time in 2 bands of output rows."""
    code = ("import hashlib, numpy as np, convnet; from convnet import ops\n"
            "h = hashlib.sha256(); r = np.random.default_rng(5); T = convnet.tensor\n"
            "shapes = ((7, 8, 9, 16, 3, 1, 1, 2), (3, 3, 23, 8, 5, 2, 2, 1), (2, 3, 67, 4, 5, 2, 2, 1))\n"
            "for n, c, hw, k, ks, st, pd, g in shapes:\n"
            "    x = r.standard_normal((n, c, hw, hw), np.float32)\n"
            "    w = r.standard_normal((k, c // g, ks, ks), np.float32)\n"
            "    b = r.standard_normal(k, np.float32)\n"
            "    y = ops.conv2d(T(x), T(w), T(b), st, pd, g).numpy()\n"
            "    dy = T(r.standard_normal(y.shape, np.float32))\n"
            "    outs = [y] + [t.numpy() for t in ops.conv2d_backward(T(x), T(w), dy, st, pd, g)]\n"
            "    for t in outs: h.update(t.tobytes())\n"
            "print(h.hexdigest())")
    digests = digests_by_thread_count(code)
    assert digests == [digests[0]] * 4
