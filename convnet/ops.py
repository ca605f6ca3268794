"""The public kernels: the functional surface users call directly.

Every function takes and returns convnet.Tensor (float32 data, int32 labels, uint8 masks
and images). The compiled entry point of each op (csrc/ops/<family>.cpp) checks shapes,
dtypes and devices once and raises ValueError, TypeError or RuntimeError naming the op;
this module only supplies defaults, normalises int-or-pair arguments, and documents.
"""
import numpy as np

from . import _C
from ._checks import flag, integer, number


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return integer(v[0], name), integer(v[1], name)
    return integer(v, name), integer(v, name)


def _seed(seed):
    """A seed for the kernels' 64-bit generator: any integer in [-2**63, 2**64), the same bits as
    an int64 (2**64 - 1 and -1 draw the same mask); None draws one."""
    if seed is None:
        return int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    seed = integer(seed, "dropout: seed")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"dropout: seed must fit in 64 bits ([-2**63, 2**64)), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


# ---- elementwise: csrc/ops/elementwise.cpp ----

def relu(x):
    """max(0, x), elementwise."""
    return _C.relu(x)


def relu_backward(y, dy):
    """Gradient of relu from its output y and the output gradient dy."""
    return _C.relu_backward(y, dy)


def dropout(x, p=0.5, seed=None):
    """Training-time dropout: returns (y, mask) with mask a uint8 tensor (1 = kept) and
    y = x * mask / (1 - p), so no rescaling is needed at test time (the paper's halving of
    the outputs at test time, done at training time instead). Each element's draw depends
    only on (seed, its index): the same on CPU and GPU and for any thread count. The draws have
    24 bits, so an element is kept with probability 1 - p to within 2^-24, and p may be at most
    1 - 2^-24 (past it nothing would be kept)."""
    return _C.dropout(x, number(p, "dropout: p"), _seed(seed))


def dropout_backward(dy, mask, p=0.5):
    """dx = dy * mask / (1 - p)."""
    return _C.dropout_backward(dy, mask, number(p, "dropout_backward: p"))


def sgd_update(w, dw, v, lr, momentum=0.9, weight_decay=5e-4):
    """The paper's update, in place on w and v:
    v = momentum*v - weight_decay*lr*w - lr*dw;  w = w + v."""
    _C.sgd_update(w, dw, v, number(lr, "sgd_update: lr"), number(momentum, "sgd_update: momentum"),
                  number(weight_decay, "sgd_update: weight_decay"))


# ---- layer-graph plumbing: csrc/ops/join.cpp ----

def add_(a, b):
    """a += b in place (same shape and device); returns a. Sums the gradients of an output
    that several layers read."""
    return _C.add_(a, b)


def concat(xs, axis=1):
    """A new tensor joining the tensors xs (same device, same shape outside `axis`) along axis."""
    return _C.concat(list(xs), integer(axis, "concat: axis"))


def split(x, sizes, axis=1):
    """New tensors holding consecutive slices of x along axis, of the given sizes (summing to
    x.shape[axis]): the inverse of concat."""
    return _C.split(x, [integer(s, "split: sizes") for s in sizes], integer(axis, "split: axis"))


# ---- local response normalisation: csrc/ops/lrn.cpp ----

def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """The paper's cross-channel LRN on NCHW x:
    b_i = a_i / (k + alpha * sum_{j=max(0,i-size//2)}^{min(C-1,i+size//2)} a_j^2)^beta.
    alpha is NOT divided by size (Caffe and PyTorch divide; pass alpha*size to compare).
    Computed in float32; elements where that leaves float's range (sums of squares past 3.4e38,
    s^-beta overflowing for a tiny k) are computed again in double, so b is right wherever it
    fits in a float32."""
    return _C.lrn(x, integer(size, "lrn: size"), number(alpha, "lrn: alpha"), number(beta, "lrn: beta"),
                  number(k, "lrn: k"))


def lrn_backward(x, y, dy, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Gradient of lrn with respect to x, from its input x, output y and output gradient dy."""
    return _C.lrn_backward(x, y, dy, integer(size, "lrn_backward: size"), number(alpha, "lrn_backward: alpha"),
                           number(beta, "lrn_backward: beta"), number(k, "lrn_backward: k"))


# ---- max-pool: csrc/ops/pool.cpp ----

def max_pool(x, size=3, stride=2, return_indices=False):
    """Overlapping max-pool on NCHW x, no padding; output (H - size) // stride + 1.
    A partial window at the edge is dropped (floor), as in the paper (55 -> 27 -> 13 -> 6).
    With return_indices=True returns (y, indices): indices (int32, shaped like y) hold each
    window's first maximal input (row-major) as its flat offset h * W + w in the input plane,
    for max_pool_backward(..., indices=indices)."""
    y, indices = _C.max_pool(x, integer(size, "max_pool: size"), integer(stride, "max_pool: stride"),
                             flag(return_indices, "max_pool: return_indices"))
    return (y, indices) if return_indices else y


def max_pool_backward(x, y, dy, size=3, stride=2, indices=None):
    """Gradient of max_pool: each window's gradient goes to its first maximal input
    (lowest row, then lowest column): deterministic under ties. y must be max_pool(x); it is
    only checked for shape (the argmax is recomputed from x). With indices from
    max_pool(..., return_indices=True) the argmax is not recomputed and y may be None; the
    result is bitwise the same. An index outside its window raises ValueError on the CPU; on a
    GPU (not checked: no sync) its gradient is dropped."""
    return _C.max_pool_backward(x, y, dy, integer(size, "max_pool_backward: size"),
                                integer(stride, "max_pool_backward: stride"), indices)


# ---- softmax with cross-entropy: csrc/ops/softmax.cpp ----

def softmax_cross_entropy(logits, labels):
    """(loss, probs): mean over the batch of -log softmax(logits)[label], as a Python float,
    and the softmax probabilities (N, classes). logits float32 (N, classes), labels int32 (N,)."""
    return _C.softmax_cross_entropy(logits, labels)


def softmax_cross_entropy_backward(probs, labels):
    """Gradient of the mean loss with respect to the logits: (probs - onehot(labels)) / N."""
    return _C.softmax_cross_entropy_backward(probs, labels)


# ---- convolution: csrc/ops/conv.cpp ----

def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """Cross-correlation of NCHW x with w (out_channels, in_channels/groups, kh, kw), plus b
    (out_channels,) if given. Output size (H + 2*pad - kh) // stride + 1 (floor)."""
    sh, sw = _pair(stride, "conv2d: stride")
    ph, pw = _pair(padding, "conv2d: padding")
    return _C.conv2d(x, w, b, sh, sw, ph, pw, integer(groups, "conv2d: groups"))


def conv2d_backward(x, w, dy, stride=1, padding=0, groups=1, input_grad=True, weight_grad=True):
    """(dx, dw, db): gradients of conv2d with respect to its input, weights and bias.
    input_grad=False skips dx (None), weight_grad=False skips dw and db (None)."""
    sh, sw = _pair(stride, "conv2d_backward: stride")
    ph, pw = _pair(padding, "conv2d_backward: padding")
    return _C.conv2d_backward(x, w, dy, sh, sw, ph, pw, integer(groups, "conv2d_backward: groups"),
                              flag(input_grad, "conv2d_backward: input_grad"),
                              flag(weight_grad, "conv2d_backward: weight_grad"))


# ---- fully connected: csrc/ops/linear.cpp ----

def linear(x, w, b=None):
    """y = x @ w.T + b with x (N, in), w (out, in), b (out,)."""
    return _C.linear(x, w, b)


def linear_backward(x, w, dy):
    """(dx, dw, db): gradients of linear with respect to x, w and b."""
    return _C.linear_backward(x, w, dy)


# ---- data augmentation: csrc/ops/augment.cpp ----

def augment(images, offsets, flips=None, rgb_shift=None, mean=None, crop=None, source=None):
    """Crop, flip, subtract the mean image, add the lighting shift and go to NCHW, in one pass.

    images uint8 (B, H, W, 3); offsets int32 (N, 2) as (y, x) of each crop's top-left corner;
    flips uint8 (N,) (nonzero = horizontal reflection of the crop); rgb_shift float32 (N, 3), the
    per-image PCA lighting term eigvec @ (alpha * eigval); mean float32 (H, W, 3), subtracted at
    the source pixel; crop an int or (crop_h, crop_w) (None: the whole image); source int32 (N,)
    picks the input image of each output (None: output k from image k, N = B), so ten views
    need no copies of the images. All tensors on one device. Returns float32 (N, 3, crop_h, crop_w):
    out[k, c, i, j] = images[s, y+i, x+j', c] - mean[y+i, x+j', c] + rgb_shift[k, c],
    j' = crop_w-1-j when flipped."""
    crop_h, crop_w = (None, None) if crop is None else _pair(crop, "augment: crop")
    return _C.augment(images, offsets, flips, rgb_shift, mean, crop_h, crop_w, source)
