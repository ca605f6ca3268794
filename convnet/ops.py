"""The public kernels. Every function takes and returns convnet.Tensor; arguments are
checked (shape, dtype, device) in the compiled entry point, which raises ValueError,
TypeError or RuntimeError naming the op."""
from . import _C


def relu(x):
    """max(0, x), elementwise."""
    return _C.relu(x)


def relu_backward(y, dy):
    """Gradient of relu given its output y and the output gradient dy."""
    return _C.relu_backward(y, dy)
