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
