"""Softmax with cross-entropy: kernel vs a NumPy float64 reference, the reference's gradient
by finite differences, numerical stability, determinism, and bad input."""
import numpy as np
import pytest

import convnet
from convnet import ops

from reference import assert_close, numeric_grad


# ---- NumPy float64 references ----

def ref_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def ref_softmax_xent(x, labels):
    """(mean loss, probs): loss = mean_i [logsumexp(x_i) - x_i[label_i]]."""
    logp = ref_log_softmax(x)
    return -np.mean(logp[np.arange(len(labels)), labels]), np.exp(logp)


def ref_softmax_xent_backward(probs, labels):
    n, k = probs.shape
    return (probs - np.eye(k)[labels]) / n


SHAPES = [(1, 1), (1, 10), (5, 2), (3, 1), (33, 10), (7, 1000), (1, 1000), (4, 37), (2, 257)]


@pytest.mark.parametrize("n,k", SHAPES)
def test_softmax_xent_forward_backward(device, rng, n, k):
    x = 3 * rng.standard_normal((n, k))
    labels = rng.integers(0, k, n).astype(np.int32)
    loss, probs = ops.softmax_cross_entropy(convnet.tensor(x, device), convnet.tensor(labels, device))
    assert isinstance(loss, float)
    assert probs.device == device and probs.dtype == "float32" and probs.shape == (n, k)
    want_loss, want_probs = ref_softmax_xent(x.astype(np.float32), labels)
    assert abs(loss - want_loss) <= 1e-5 * max(1.0, abs(want_loss)), (loss, want_loss)
    assert_close(probs.numpy(), want_probs, 1e-5, "probs")
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-5)
    dx = ops.softmax_cross_entropy_backward(probs, convnet.tensor(labels, device)).numpy()
    want_dx = ref_softmax_xent_backward(want_probs, labels)
    if n * k <= 40:  # the reference's own gradient, by finite differences of its loss
        assert_close(numeric_grad(lambda v: ref_softmax_xent(v, labels)[0], x),
                     ref_softmax_xent_backward(ref_softmax_xent(x, labels)[1], labels), 1e-6)
    assert_close(dx, want_dx, 1e-5, "dlogits")


def test_softmax_xent_huge_logits(device):
    # exp(1e4) overflows and exp(-1e4) underflows: only the max-subtracted form survives.
    x = np.array([[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4 + 3, -1e4 + 1, -1e4], [3e38, -3e38, 1.0, 0.0]],
                 np.float32)
    labels = np.array([1, 1, 0], np.int32)
    loss, probs = ops.softmax_cross_entropy(convnet.tensor(x, device), convnet.tensor(labels, device))
    want_loss, want_probs = ref_softmax_xent(x, labels)
    # row 0: loss 2e4 (label at -1e4 vs max 1e4); row 1: ordinary after the shift; row 2: 0.
    assert np.isfinite(loss) and np.all(np.isfinite(probs.numpy()))
    assert abs(loss - want_loss) <= 1e-6 * abs(want_loss), (loss, want_loss)
    assert_close(probs.numpy(), want_probs, 1e-6, "probs")


def test_softmax_small_probabilities_relative_accuracy(device):
    # Each element to a relative 1e-6, down to probabilities near float's smallest normal:
    # the max-normalised error of the other tests would not see a bad tail of exp.
    x = np.linspace(-87.0, 0.0, 2001).astype(np.float32)
    logits = np.stack([np.zeros_like(x), x], axis=1)
    labels = np.ones(len(x), np.int32)
    loss, probs = ops.softmax_cross_entropy(convnet.tensor(logits, device), convnet.tensor(labels, device))
    want_loss, want = ref_softmax_xent(logits, labels)
    np.testing.assert_allclose(probs.numpy(), want, rtol=1e-6, atol=0)
    assert abs(loss - want_loss) <= 1e-6 * abs(want_loss)


def test_softmax_xent_deterministic(device, rng):
    x = convnet.tensor(rng.standard_normal((300, 1000)), device)
    labels = convnet.tensor(rng.integers(0, 1000, 300).astype(np.int32), device)
    a, pa = ops.softmax_cross_entropy(x, labels)
    b, pb = ops.softmax_cross_entropy(x, labels)
    assert a == b  # bit-identical: a fixed-order reduction, no atomics
    np.testing.assert_array_equal(pa.numpy(), pb.numpy())


def test_softmax_xent_bad_input(device):
    def t(a, dev=device):
        return convnet.tensor(a, dev)

    x = t(np.zeros((3, 4), np.float32) + np.arange(4, dtype=np.float32))
    good = t(np.array([0, 1, 3], np.int32))
    op = "softmax_cross_entropy"
    with pytest.raises(TypeError, match=f"{op}: 'labels' must be int32, got float32"):
        ops.softmax_cross_entropy(x, t(np.array([0, 1, 2], np.float32)))
    with pytest.raises(TypeError, match=f"{op}: 'logits' must be float32"):
        ops.softmax_cross_entropy(t(np.ones((3, 4), np.int32)), good)
    for bad in (4, -1):
        labels = np.array([0, bad, 1], np.int32)
        with pytest.raises(ValueError, match=rf"{op}: label {bad} at index 1 is out of range \[0, 4\)"):
            ops.softmax_cross_entropy(x, t(labels))
        with pytest.raises(ValueError, match=rf"{op}_backward: label {bad} at index 1 is out of range"):
            ops.softmax_cross_entropy_backward(x, t(labels))
    for v in (np.nan, np.inf, -np.inf):
        a = np.ones((3, 4), np.float32)
        a[2, 1] = v
        with pytest.raises(ValueError, match=f"{op}: 'logits' contains 1 NaN or infinite"):
            ops.softmax_cross_entropy(t(a), good)
    with pytest.raises(ValueError, match=f"{op}: 'labels' has 2 entries but 'logits' has 3 rows"):
        ops.softmax_cross_entropy(x, t(np.array([0, 1], np.int32)))
    with pytest.raises(ValueError, match=f"{op}_backward: 'labels' has 4 entries but 'probs' has 3 rows"):
        ops.softmax_cross_entropy_backward(x, t(np.array([0, 1, 2, 3], np.int32)))
    with pytest.raises(ValueError, match=f"{op}: 'logits' must have 2 dimensions"):
        ops.softmax_cross_entropy(t(np.ones(4, np.float32)), t(np.array([0], np.int32)))
    with pytest.raises(ValueError, match=f"{op}: 'labels' must have 1 dimensions"):
        ops.softmax_cross_entropy(x, t(np.zeros((3, 1), np.int32)))
    with pytest.raises(ValueError, match=f"{op}: 'logits' must have at least one row"):
        ops.softmax_cross_entropy(t(np.ones((0, 4), np.float32)), t(np.zeros(0, np.int32)))
    if device != "cpu":
        with pytest.raises(ValueError, match=f"{op}: 'logits' is on cuda:0 but 'labels' is on cpu"):
            ops.softmax_cross_entropy(x, t(np.array([0, 1, 3], np.int32), "cpu"))


def test_softmax_xent_findings_over_many_rows(device, rng):
    """The forward checks the values in the pass that reads them: the first bad label over rows
    spread across threads, an exact count of non-finite values over many rows and wide rows,
    and a bad label reported before non-finite logits."""
    n, k = 600, 1000
    x = rng.standard_normal((n, k)).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int32)
    op = "softmax_cross_entropy"

    def run(a, l):
        return ops.softmax_cross_entropy(convnet.tensor(a, device), convnet.tensor(l, device))

    bad = labels.copy()
    bad[[517, 300, 599]] = [k, -7, 1 << 30]
    with pytest.raises(ValueError, match=rf"{op}: label -7 at index 300 is out of range \[0, {k}\)"):
        run(x, bad)
    spoiled = x.copy()
    spots = [(0, 0), (0, 999), (1, 500), (255, 3), (256, 256), (599, 998), (420, 17)]
    for i, (r, c) in enumerate(spots):
        spoiled[r, c] = (np.nan, np.inf, -np.inf)[i % 3]
    with pytest.raises(ValueError, match=f"{op}: 'logits' contains {len(spots)} NaN or infinite"):
        run(spoiled, labels)
    with pytest.raises(ValueError, match=f"{op}: label -7 at index 300"):
        run(spoiled, bad)
    # After the refusals the same call on clean input is right.
    loss, probs = run(x, labels)
    want_loss, want_probs = ref_softmax_xent(x, labels)
    assert abs(loss - want_loss) <= 1e-6 * abs(want_loss)
    assert_close(probs.numpy(), want_probs, 1e-5)
