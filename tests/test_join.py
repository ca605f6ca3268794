"""The layer graph's plumbing ops: concat / split along an axis and in-place add."""
import numpy as np
import pytest

import convnet
from convnet import ops


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_split_roundtrip(device, rng, axis):
    shapes = []
    for k in (3, 1, 4):
        s = [2, 5, 3, 7]
        s[axis] = k
        shapes.append(s)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    y = ops.concat([convnet.tensor(a, device) for a in arrays], axis)
    want = np.concatenate(arrays, axis)
    np.testing.assert_array_equal(y.numpy(), want)
    parts = ops.split(y, [a.shape[axis] for a in arrays], axis)
    for p, a in zip(parts, arrays):
        np.testing.assert_array_equal(p.numpy(), a)


def test_add_inplace(device, rng):
    a = rng.standard_normal((3, 1001)).astype(np.float32)
    b = rng.standard_normal((3, 1001)).astype(np.float32)
    ta = convnet.tensor(a, device)
    out = ops.add_(ta, convnet.tensor(b, device))
    np.testing.assert_array_equal(ta.numpy(), a + b)
    np.testing.assert_array_equal(out.numpy(), a + b)
    ops.add_(ta, ta)  # the same tensor twice: elementwise, allowed
    np.testing.assert_array_equal(ta.numpy(), 2 * (a + b))


def test_add_inplace_refuses_overlapping_views():
    torch = pytest.importorskip("torch")
    buf = torch.arange(10, dtype=torch.float32)
    a, b = convnet.from_dlpack(buf[:6]), convnet.from_dlpack(buf[3:9])
    with pytest.raises(ValueError, match="add_: 'a' and 'b' share memory \\(only the same tensor twice"):
        ops.add_(a, b)
    np.testing.assert_array_equal(buf.numpy(), np.arange(10))


def test_bad_input(device):
    a = convnet.zeros((2, 3, 4), device=device)
    b = convnet.zeros((2, 3, 5), device=device)
    with pytest.raises(ValueError, match="concat"):
        ops.concat([a, b], 1)
    with pytest.raises(ValueError, match="concat"):
        ops.concat([], 1)
    with pytest.raises(ValueError, match="split"):
        ops.split(a, [1, 1], 1)
    with pytest.raises(ValueError, match="split"):
        ops.split(a, [3], 5)
    with pytest.raises(ValueError, match="add_"):
        ops.add_(a, b)
    with pytest.raises(TypeError, match="add_"):
        ops.add_(a, convnet.zeros((2, 3, 4), dtype="int32", device=device))
    # sizes whose sum passes int64 (they wrapped: shapes of 2^63 - 1 on empty tensors)
    with pytest.raises(ValueError, match="split: sizes sum to more than the 3 of axis 1 of \\(0, 3\\)"):
        ops.split(convnet.empty((0, 3), device=device), [2**63 - 1, 2**63 - 1, 5], 1)
    with pytest.raises(ValueError, match="concat: the sizes along axis 1 overflow int64"):
        ops.concat([convnet.empty((0, 2**60), device=device)] * 8, 1)  # each passes the shape check; 8 * 2^60 does not fit


@pytest.mark.parametrize("sizes", [(4, 8, 12), (4, 3, 8)])
def test_concat_split_aligned_rows(device, rng, sizes):
    """Channel concat/split with rows of whole 16-byte groups (the CUDA kernel's 4-float path)
    and with one part breaking the alignment (its 1-float path), against NumPy. A NaN block of
    the output's size is freed first, for the caching allocator to hand out again as the output
    (an element left unwritten then shows as NaN)."""
    poison = convnet.tensor(np.full((3, sum(sizes), 4, 4), np.nan, np.float32), device)
    del poison
    arrays = [rng.standard_normal((3, k, 4, 4)).astype(np.float32) for k in sizes]
    y = ops.concat([convnet.tensor(a, device) for a in arrays], 1)
    np.testing.assert_array_equal(y.numpy(), np.concatenate(arrays, 1))
    for p, a in zip(ops.split(y, list(sizes), 1), arrays):
        np.testing.assert_array_equal(p.numpy(), a)


def test_concat_split_many_rows(device, rng):
    """More rows than a CUDA grid's y dimension holds (65535): the row loop."""
    arrays = [rng.standard_normal((70001, k)).astype(np.float32) for k in (1, 2)]
    y = ops.concat([convnet.tensor(a, device) for a in arrays], 1)
    np.testing.assert_array_equal(y.numpy(), np.concatenate(arrays, 1))
    for p, a in zip(ops.split(y, [1, 2], 1), arrays):
        np.testing.assert_array_equal(p.numpy(), a)
