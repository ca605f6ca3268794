"""The layer graph: towers vs one grouped device (same function, same gradients), finite
differences end to end, placement, threads, validation and bad input."""
import threading

import numpy as np
import pytest

import convnet
from convnet import models
from convnet.graph import Net, physical_device

TINY = dict(num_classes=5, input_size=40, widths=(8, 12, 16, 16, 12), fc=(24, 24), dropout=0.0)


def batch(rng, n, size, classes):
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    return x, y


def lively_state(net, rng):
    """Weights scaled by fan-in (He) and non-zero biases, so activations and gradients are O(1):
    the paper's N(0, 0.01) makes them too small to compare meaningfully."""
    state = {}
    for k, shape in net.shapes().items():
        if k.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            state[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            state[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return state


def run_step(net, x, y):
    logits, loss = net.forward(x, y, train=True)
    net.backward()
    return logits.numpy(), loss, net.grad_dict()


def assert_same_step(a, b, rtol=2e-4):
    (la, lossa, ga), (lb, lossb, gb) = a, b
    scale = np.abs(la).max()
    np.testing.assert_allclose(la, lb, rtol=0, atol=rtol * scale)
    assert abs(lossa - lossb) <= rtol * max(1.0, abs(lossa))
    assert ga.keys() == gb.keys()
    for k in ga:
        err = np.abs(ga[k] - gb[k]).max() / np.abs(ga[k]).max()
        assert err < rtol * 10, f"{k}: relative gradient difference {err:.2e}"


def towers_vs_grouped(make, rng, devices2, devices1, n=3, **kw):
    two = make(towers=2, devices=devices2, **kw)
    one = make(towers=1, devices=devices1, **kw)
    state = lively_state(one, rng)
    one.load_state_dict(state)
    two.load_state_dict(state)
    size = one.input_layer.shape[1]
    x, y = batch(rng, n, size, one.output_layer.shape[0])
    return run_step(two, x, y), run_step(one, x, y), two, one, x


@pytest.mark.parametrize("parallel", [False, True])
def test_two_towers_equal_grouped_small(rng, parallel):
    make = lambda **k: models.small_alexnet(parallel=parallel if k["towers"] == 2 else None, **TINY, **k)  # noqa: E731
    a, b, two, one, x = towers_vs_grouped(make, rng, ["cpu:0", "cpu:1"], ["cpu:0"])
    assert two.parallel == parallel
    assert_same_step(a, b)
    np.testing.assert_allclose(two.features(x, "fc7"), one.features(x, "fc7"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra_conv", [False, True])
def test_two_towers_equal_grouped_alexnet_structure(rng, extra_conv):
    # The real AlexNet layers (conv1 11x11/4 pad 2, 5x5 conv2, LRN, 3/2 pools) at 1/8 width, 67x67 input.
    make = lambda **k: models.alexnet(num_classes=7, input_size=67, width=0.125, dropout=0.0,  # noqa: E731
                                      extra_conv=extra_conv, **k)
    a, b, *_ = towers_vs_grouped(make, rng, ["cpu:0", "cpu:1"], ["cpu:0"], n=2)
    assert_same_step(a, b)


def test_two_towers_equal_grouped_cuda(rng):
    if not convnet.cuda_available():
        pytest.skip("CUDA: no GPU visible" if convnet._C.cuda_built() else "CUDA: convnet built without CUDA")
    make = lambda **k: models.small_alexnet(**TINY, **k)  # noqa: E731
    # both logical GPUs on cuda:0 (or cuda:1 if present), in two threads on per-thread streams
    a, b, two, one, x = towers_vs_grouped(make, rng, ["cuda:0", "cuda:1"], ["cuda:0"])
    assert two.parallel
    assert_same_step(a, b)
    # and the CPU computes the same
    cpu = models.small_alexnet(towers=1, devices=["cpu"], **TINY)
    cpu.load_state_dict(one.state_dict())
    y = np.arange(3, dtype=np.int32) % 5
    assert_same_step(run_step(cpu, x, y), run_step(one, x, y), rtol=1e-3)
    # the same net again for a full AlexNet-shaped step, mixed placement cuda + cpu
    mixed = models.small_alexnet(towers=2, devices=["cuda:0", "cpu:1"], **TINY)
    mixed.load_state_dict(one.state_dict())
    assert mixed.placement() == {"cuda:0": "cuda:0", "cpu:1": "cpu"}
    assert_same_step(run_step(mixed, x, y), run_step(one, x, y), rtol=1e-3)


def test_finite_differences():
    """Analytic gradients against central differences of the float32 loss. A few entries sit on a
    kink (a ReLU or a max-pool choice flips within eps): those are recognised by two step sizes
    disagreeing and left out, and most entries must remain."""
    rng = np.random.default_rng(7)
    net = models.small_alexnet(towers=2, devices=["cpu:0", "cpu:1"], num_classes=4, input_size=40,
                               widths=(4, 6, 8, 8, 6), fc=(10, 10), dropout=0.0)
    net.load_state_dict(lively_state(net, rng))
    x, y = batch(rng, 2, 40, 4)
    _, _, grads = run_step(net, x, y)
    state = net.state_dict()

    def central(key, idx, eps):
        losses = []
        for sign in (1, -1):
            s = {k: v.copy() for k, v in state.items()}
            s[key][idx] += sign * eps
            net.load_state_dict(s)
            losses.append(net.forward(x, y)[1])
        return (losses[0] - losses[1]) / (2 * eps)

    num, ana, kinks = [], [], 0
    for key, g in grads.items():
        flat = np.abs(g).ravel()
        for i in list(rng.choice(flat.size, 2, replace=False)) + [int(flat.argmax())]:
            idx = np.unravel_index(i, g.shape)
            a, b = central(key, idx, 1e-4), central(key, idx, 2e-4)
            if abs(a - b) > 2e-3 + 0.02 * abs(a):
                kinks += 1
                continue
            num.append(a)
            ana.append(g[idx])
    net.load_state_dict(state)
    num, ana = np.array(num), np.array(ana)
    assert kinks <= len(num) // 4, f"{kinks} of {kinks + len(num)} entries on kinks"
    assert np.linalg.norm(ana) > 1e-2  # the check has something to compare
    rel = np.linalg.norm(num - ana) / np.linalg.norm(ana)
    assert rel < 1e-2, f"finite differences disagree: relative error {rel:.3g}\n{np.c_[num, ana]}"


def test_gradients_match_torch_float64(rng):
    """Every gradient of the two-tower net against PyTorch autograd in float64 (same graph)."""
    torch = pytest.importorskip("torch")
    from convnet.torch_net import TorchNet

    net = models.small_alexnet(towers=2, devices=["cpu:0", "cpu:1"], **TINY)
    net.load_state_dict(lively_state(net, rng))
    x, y = batch(rng, 3, 40, 5)
    logits, loss, grads = run_step(net, x, y)
    ref = TorchNet(net, dtype=torch.float64)
    tlogits, tloss = ref.forward(x, y)
    tloss.backward()
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    assert abs(loss - tloss.item()) < 1e-5 * max(1, abs(loss))
    for k, g in ref.grads().items():
        err = np.abs(grads[k] - g).max() / np.abs(g).max()
        assert err < 1e-4, f"{k}: relative error {err:.2e} against PyTorch float64"


def test_dropout_reproducible_and_off_at_test_time(rng):
    net = models.small_alexnet(devices=["cpu:0", "cpu:1"], **{**TINY, "dropout": 0.5})
    net.load_state_dict(lively_state(net, rng))
    x, y = batch(rng, 4, 40, 5)
    l0 = net.forward(x, y, train=True, step=3)[1]
    l1 = net.forward(x, y, train=True, step=3)[1]
    l2 = net.forward(x, y, train=True, step=4)[1]
    assert l0 == l1 and l0 != l2
    assert net.step == 5
    t0 = net.forward(x).numpy()
    np.testing.assert_array_equal(t0, net.forward(x).numpy())


def test_gradients_accumulate_over_readers(rng):
    # "a" feeds both b and c, which are joined again: da = db + dc.
    specs = [{"name": "x", "type": "input", "shape": [4, 5, 5]},
             {"name": "a", "type": "conv", "inputs": ["x"], "out_channels": 3, "kernel": 3, "padding": 1},
             {"name": "b", "type": "relu", "inputs": ["a"]},
             {"name": "c", "type": "conv", "inputs": ["a"], "out_channels": 2, "kernel": 1},
             {"name": "d", "type": "linear", "inputs": ["b", "c"], "out_features": 3},
             {"name": "loss", "type": "softmax_loss", "inputs": ["d"]}]
    net = Net(specs, devices=["cpu"])
    net.load_state_dict(lively_state(net, rng))
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = np.array([0, 2])
    _, _, g = run_step(net, x, y)
    # NumPy: same graph by hand, to check the sum at "a" (a is 3 channels, b = relu(a), c = 1x1 conv of a).
    s = net.state_dict()
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    a = np.einsum("oikl,nihwkl->nohw", s["a.weight"],
                  np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))) + s["a.bias"][:, None, None]
    b = np.maximum(a, 0)
    c = np.einsum("oi,nihw->nohw", s["c.weight"][:, :, 0, 0], a) + s["c.bias"][:, None, None]
    h = np.concatenate([b, c], 1).reshape(2, -1)
    d = h @ s["d.weight"].T + s["d.bias"]
    p = np.exp(d - d.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dd = (p - np.eye(3)[y]) / 2
    dh = (dd @ s["d.weight"]).reshape(2, 5, 5, 5)
    da = dh[:, :3] * (a > 0) + np.einsum("oi,nohw->nihw", s["c.weight"][:, :, 0, 0], dh[:, 3:])
    np.testing.assert_allclose(g["a.bias"], da.sum((0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_placement_and_table():
    net = models.small_alexnet(**TINY)
    assert net.placement() == ({"cuda:0": "cuda:0", "cuda:1": "cuda:1" if convnet.device_count() > 1 else "cuda:0"}
                               if convnet.cuda_available() else {"cpu:0": "cpu", "cpu:1": "cpu"})
    text = str(net)
    assert "conv3_a" in text and "pool2_a,pool2_b" in text and "relu7_a,relu7_b" in text
    assert f"{net.num_params():,} parameters" in text
    assert physical_device("cpu:3") == "cpu"


@pytest.mark.parametrize("name", ["tpu:0", "gpu", "cuda:x", "cpu:-1", "", "cpu\n", "cuda:0\n"])  # 3: test_models
def test_unknown_device_names(name):
    with pytest.raises(ValueError, match="device"):
        models.small_alexnet(devices=["cpu:0", name], **TINY)


def test_cuda_device_without_gpu():
    if convnet.cuda_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="device 'cuda:0' is not available: (no GPU is visible|convnet was "
                                           "built without CUDA)"):  # a ValueError, unlike tensors' and ops'
        models.small_alexnet(devices=["cuda:0", "cuda:1"], **TINY)


def test_too_few_devices():
    with pytest.raises(ValueError, match="2 towers"):
        models.small_alexnet(devices=["cpu:0"], **TINY)


def test_tower_past_the_default_devices():
    # a tower index of 2**62 once built a list of 2**62 device names (MemoryError, or the OOM killer)
    far = BASE + [{"name": "g", "type": "relu", "inputs": ["f"], "tower": 2**62}]
    with pytest.raises(ValueError, match=r"layer 'g': tower 4611686018427387904 asks for .* at most 64"):
        Net(far)
    with pytest.raises(ValueError, match="towers but 1 devices"):
        Net(far, devices=["cpu"])


BASE = [{"name": "x", "type": "input", "shape": [3, 8, 8]},
        {"name": "f", "type": "linear", "inputs": ["x"], "out_features": 2}]


@pytest.mark.parametrize("extra, match", [
    ([{"name": "f", "type": "relu", "inputs": ["x"]}], "duplicate"),
    ([{"name": "g", "type": "relu", "inputs": ["nope"]}], "unknown layer 'nope'"),
    ([{"name": "g", "type": "relu", "inputs": ["h"]}, {"name": "h", "type": "relu", "inputs": ["g"]}], "cycle"),
    ([{"name": "g", "type": "warp", "inputs": ["f"]}], "unknown type"),
    ([{"name": "g", "type": ["relu"], "inputs": ["f"]}], "layer 'g': unknown type \\['relu'\\]"),
    ([{"name": "g", "type": "conv", "inputs": ["x"]}], "out_channels"),
    ([{"name": "g", "type": "relu", "inputs": []}], "no input"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 9}], "does not fit"),
    ([{"name": "g", "type": "relu", "inputs": ["x", "f"]}], "takes one input"),
    ([{"name": "y", "type": "input", "shape": [1]}], "exactly one input"),
    # settings that are not integers in range: ZeroDivisionError, a kernel "that does not fit" for
    # stride -1, "zeros: negative dimension", or silent truncation (stride 1.5 -> 1) before
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "stride": 0}],
     "layer 'g': stride must be >= 1, got 0"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "stride": -1}],
     "layer 'g': stride must be >= 1, got -1"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "groups": 0}],
     "layer 'g': groups must be >= 1"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "stride": 1.5}],
     "layer 'g': stride must be an integer, got 1.5"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": -2, "kernel": 3}], "out_channels must be >= 1"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 0}], "kernel must be >= 1"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "padding": -1}],
     "padding must be >= 0"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "weight_std": float("nan")}],
     "weight_std must be finite"),
    ([{"name": "g", "type": "maxpool", "inputs": ["x"], "stride": 0}], "layer 'g': stride must be >= 1"),
    ([{"name": "g", "type": "lrn", "inputs": ["x"], "groups": 0}], "layer 'g': groups must be >= 1"),
    ([{"name": "g", "type": "linear", "inputs": ["x"], "out_features": 0}], "out_features must be >= 1"),
    ([{"name": "g", "type": "relu", "inputs": "x"}], "inputs must be a list of layer names"),
    # each of these once came out as a bare TypeError ('int' object is not iterable, unhashable
    # type: 'list', cannot unpack ...) or was truncated without a word (rows [1.5, 4])
    ([{"name": "g", "type": "relu", "inputs": 3}], "layer 'g': inputs must be a list of layer names"),
    ([{"name": ["g"], "type": "relu", "inputs": ["f"]}], "name must be a non-empty string"),
    ([{"name": "", "type": "relu", "inputs": ["f"]}], "name must be a non-empty string"),
    ([{"name": "g", "type": "relu", "inputs": ["f"], "group": 0.5}], "layer 'g': group must be a non-empty string"),
    ([{"name": "g", "type": "linear", "inputs": ["f"], "out_features": 2, "rows": 2}],
     r"layer 'g': rows must be a pair \[start, full rows\], got 2"),
    ([{"name": "g", "type": "linear", "inputs": ["f"], "out_features": 2, "rows": [1.5, 4]}],
     r"layer 'g': rows\[0\] must be an integer"),
    ([{"name": "g", "type": "linear", "inputs": ["f"], "out_features": 2, "rows": [3, 4]}],
     "layer 'g': rows 3 .. 5 do not fit in 4 rows"),
    # the LRN op's own rules, checked when the net is built (they surfaced at the first forward)
    ([{"name": "g", "type": "lrn", "inputs": ["x"], "alpha": float("inf")}], "layer 'g': lrn: alpha must be finite"),
    ([{"name": "g", "type": "lrn", "inputs": ["x"], "size": 4}], "layer 'g': lrn: size must be an odd integer"),
    ([{"name": "g", "type": "lrn", "inputs": ["x"], "k": 0.0}], "layer 'g': lrn: k must be finite and >= 1.18e-38"),
    # real-number settings: float() took strings and bools
    ([{"name": "g", "type": "dropout", "inputs": ["x"], "p": "0.5"}], "layer 'g': p must be a number, got '0.5'"),
    ([{"name": "g", "type": "lrn", "inputs": ["x"], "alpha": True}], "layer 'g': alpha must be a number, got True"),
    ([{"name": "g", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 3, "bias_init": "1"}],
     "layer 'g': bias_init must be a number"),
])
def test_graph_validation(extra, match):
    with pytest.raises(ValueError, match=match):
        Net(BASE + extra, devices=["cpu"])


def test_bad_input_layer_and_specs():
    for shape in ([3, -8, 8], [0, 8, 8], "abc", [3, 8.0, 8], [], 5, [3, True, 8]):
        with pytest.raises(ValueError, match="layer 'x': shape must be a list of integers >= 1"):
            Net([{"name": "x", "type": "input", "shape": shape}] + BASE[1:], devices=["cpu"])
    with pytest.raises(TypeError, match="a layer spec is a dict, got str"):
        Net(BASE + ["relu"], devices=["cpu"])
    net = Net([{"name": "x", "type": "input", "shape": np.array([3, 8, 8])}] + BASE[1:], devices=["cpu"])
    assert net.input_layer.shape == (3, 8, 8)


def test_bad_forward_input(rng):
    net = models.small_alexnet(devices=["cpu:0", "cpu:1"], **TINY)
    x, y = batch(rng, 2, 40, 5)
    with pytest.raises(ValueError, match=r"\(N, 3, 40, 40\)"):
        net.forward(x[:, :, :32, :32])
    with pytest.raises(ValueError, match=r"\(N, 3, 40, 40\)"):
        net.forward(x[0])
    with pytest.raises(ValueError, match="softmax"):
        net.forward(x, np.array([0, 5]))
    with pytest.raises(ValueError, match="softmax"):
        net.forward(x, np.array([-1, 0]))
    with pytest.raises(ValueError, match="labels"):
        net.forward(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels: values from 0 to 4294967299 do not fit in int32"):
        net.forward(x, np.array([0, 2**32 + 3]))  # was wrapped to class 3, silently
    with pytest.raises(TypeError, match="images must be float32, got complex64"):
        net.forward(x.astype(np.complex64))  # lost its imaginary part, with a warning
    for wrong in (np.uint8, np.int64):  # were taken as floats (2**40 + 1 rounded), as Tensors were not
        with pytest.raises(TypeError, match=f"images must be float32, got {np.dtype(wrong).name}"):
            net.forward(x.astype(wrong))
    with pytest.raises(ValueError, match="Net.forward: images: 1e[+]?39 is past float32's range"):
        net.forward(np.where(x > 0, 1e39, x.astype(np.float64)))  # was a float32 inf, then NaN logits
    with pytest.raises(TypeError, match="Net.forward: train must be True or False, got 'False'"):
        net.forward(x, y, train="False")  # ran as training: dropout on, net.step counted
    assert net.step == 0
    assert net.forward(list(x)).shape == (2, 5)  # was: 'list' object has no attribute 'shape'
    np.testing.assert_allclose(net.forward(x.astype(np.float64)).numpy(), net.forward(x).numpy())
    # NumPy's SeedSequence said only "expected non-negative integer"; int() took 1.5
    with pytest.raises(ValueError, match="Net.forward: step must be >= 0, got -1"):
        net.forward(x, y, train=True, step=-1)
    with pytest.raises(TypeError, match="Net.forward: step must be an integer"):
        net.forward(x, y, train=True, step=1.5)
    with pytest.raises(ValueError, match="Net: seed must be >= 0, got -1"):
        models.small_alexnet(devices=["cpu:0", "cpu:1"], seed=-1, **TINY)
    with pytest.raises(RuntimeError, match="backward"):
        net.forward(x, y)  # test-time forward keeps nothing for backward
        net.backward()
    with pytest.raises(ValueError, match="features"):
        net.features(x, "fc9")
    with pytest.raises(ValueError, match="Net.features: 'loss' is the loss, which needs labels"):
        net.features(x, "loss")  # was a bare KeyError


def test_no_backward_after_a_failed_forward(rng):
    net = models.small_alexnet(devices=["cpu:0", "cpu:1"], **TINY)
    x, y = batch(rng, 2, 40, 5)
    net.forward(x, y, train=True)
    with pytest.raises(ValueError, match="label 9"):
        net.forward(x[::-1].copy(), np.array([0, 9]), train=True)  # fails in the loss layer, the last
    with pytest.raises(RuntimeError, match="needs a forward with labels and train=True"):
        net.backward()  # ran, on this batch's activations with the last batch's softmax and labels


def test_one_net_is_driven_from_one_thread_at_a_time(rng):
    net = models.small_alexnet(devices=["cpu:0", "cpu:1"], **TINY)
    x, y = batch(rng, 2, 40, 5)
    inside, go_on = threading.Event(), threading.Event()
    fc6 = next(l for l in net.layers if l.name.startswith("fc6"))
    plain = fc6.forward

    def held(*args, **kwargs):  # the other thread stops inside its forward
        inside.set()
        go_on.wait(30)
        return plain(*args, **kwargs)

    fc6.forward = held
    other = threading.Thread(target=lambda: net.forward(x, y, train=True))
    other.start()
    assert inside.wait(30)
    # these mixed their activations with the other thread's: a TypeError inside max_pool_backward
    for call in (lambda: net.forward(x), net.backward):
        with pytest.raises(RuntimeError, match="running a forward or backward in another thread"):
            call()
    go_on.set()
    other.join(30)
    fc6.forward = plain
    net.backward()  # the other thread's training forward is whole
    assert all(p.grad is not None for p in net.params())


def test_forward_accepts_tensors(rng):
    net = models.small_alexnet(devices=["cpu:0", "cpu:1"], **TINY)
    x, y = batch(rng, 2, 40, 5)
    a = net.forward(x).numpy()
    b = net.forward(convnet.tensor(x)).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 5)


def test_explicit_concat_and_flatten_layers(rng):
    """concat + flatten + linear computes what a linear layer reading both inputs computes."""
    head = [{"name": "x", "type": "input", "shape": [2, 3, 3]},
            {"name": "a", "type": "conv", "inputs": ["x"], "out_channels": 2, "kernel": 1, "tower": 0},
            {"name": "b", "type": "conv", "inputs": ["x"], "out_channels": 3, "kernel": 1, "tower": 1}]
    tail = [{"name": "loss", "type": "softmax_loss", "inputs": ["f"]}]
    joined = Net(head + [{"name": "f", "type": "linear", "inputs": ["a", "b"], "out_features": 4}] + tail,
                 devices=["cpu:0", "cpu:1"])
    explicit = Net(head + [{"name": "c", "type": "concat", "inputs": ["a", "b"]},
                           {"name": "flat", "type": "flatten", "inputs": ["c"]},
                           {"name": "f", "type": "linear", "inputs": ["flat"], "out_features": 4}] + tail,
                   devices=["cpu:0", "cpu:1"], parallel=True)
    state = lively_state(joined, rng)
    joined.load_state_dict(state)
    explicit.load_state_dict(state)
    x, y = batch(rng, 3, 3, 4)
    x = x[:, :2]
    assert_same_step(run_step(joined, x, y), run_step(explicit, x, y), rtol=1e-6)
    assert explicit.by_name["flat"].shape == (45,)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_lrn_layer_groups_normalise_each_group_alone(rng, device):
    """An LRN layer with groups gives, forward and backward, exactly what ops.lrn gives on each
    group of channels alone (the layer views the groups as images: no copies)."""
    if device != "cpu" and not convnet.cuda_available():
        pytest.skip("no GPU")
    from convnet.layers import LRN
    layer = LRN({"name": "n", "type": "lrn", "inputs": ["x"], "groups": 3, "size": 5, "alpha": 0.3})
    layer.device = device
    x = rng.standard_normal((2, 12, 3, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = layer._forward(convnet.tensor(x, device=device), train=True).numpy()
    dx = layer._backward(convnet.tensor(dy, device=device)).numpy()
    assert y.shape == dx.shape == x.shape
    for g in range(3):
        part = slice(4 * g, 4 * g + 4)
        xg = convnet.tensor(np.ascontiguousarray(x[:, part]), device=device)
        yg = convnet.ops.lrn(xg, 5, 0.3)
        np.testing.assert_array_equal(y[:, part], yg.numpy())
        dyg = convnet.tensor(np.ascontiguousarray(dy[:, part]), device=device)
        np.testing.assert_array_equal(dx[:, part], convnet.ops.lrn_backward(xg, yg, dyg, 5, 0.3).numpy())
    # a window across the whole 12 channels would differ: the groups are really separate
    assert not np.allclose(y, convnet.ops.lrn(convnet.tensor(x, device=device), 5, 0.3).numpy())
