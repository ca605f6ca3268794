"""AlexNet and its variants: shapes, parameter count, the paper's initialisation, rebuilding
from config, and SGD (the paper's update rule) with its learning-rate schedules."""
import json

import numpy as np
import pytest

import convnet
from conftest import cuda_param
from convnet import models
from convnet.optim import SGD, ReduceOnPlateau, StepSchedule

PAPER_SHAPES = {
    "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
    "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),
    "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),
    "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
    "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
    "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
}
CPU2 = ["cpu:0", "cpu:1"]


@pytest.fixture(scope="module")
def full_alexnet():
    return models.alexnet(devices=CPU2)


def test_full_alexnet_shapes_and_count(full_alexnet):
    net = full_alexnet
    assert net.shapes() == PAPER_SHAPES
    assert net.num_params() == 60_965_224  # "about 60 million parameters"
    by_name = {l.name: l for l in net.layers}
    # conv1 at 224 with pad 2: 55x55; the pools 55 -> 27 -> 13 -> 6
    assert by_name["conv1_a"].shape == (48, 55, 55)
    assert by_name["pool1_b"].shape == (48, 27, 27)
    assert by_name["pool2_a"].shape == (128, 13, 13)
    assert by_name["pool5_b"].shape == (128, 6, 6)
    assert by_name["fc6_a"].in_features == 9216
    neurons = sum(int(np.prod(l.shape)) for l in net.layers if l.type in ("conv", "linear"))
    assert 600_000 < neurons < 700_000  # "650,000 neurons"
    assert abs(net.forward_macs() / 1e6 - 724) < 3  # ALEXNET.md: about 724 M multiply-adds per image
    text = net.summary()
    assert "conv3_a" in text and "pool2_a,pool2_b" in text and "drop7_a,drop7_b" in text
    assert "60,965,224 parameters" in text


def test_full_alexnet_layer_by_layer(full_alexnet):
    """The paper's table, layer by layer: what each layer is, what it reads (the crossovers, conv3,
    fc6, fc7 and fc8, read both towers; every other layer its own tower), its settings, and its
    forward multiply-adds per image (ALEXNET.md: 105.4, 223.9, 149.5, 112.1, 74.8, 37.7, 16.8, 4.1 M)."""
    both = lambda name: [name + "_a", name + "_b"]  # noqa: E731
    chain = [  # (group, type, what tower t reads: "own" or "both" of a group, settings)
        ("conv1", "conv", None, dict(kernel=11, stride=4, padding=2, groups=1, out_channels=48)),
        ("relu1", "relu", "conv1", {}),
        ("norm1", "lrn", "relu1", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)),
        ("pool1", "maxpool", "norm1", dict(size=3, stride=2)),
        ("conv2", "conv", "pool1", dict(kernel=5, stride=1, padding=2, groups=1, out_channels=128)),
        ("relu2", "relu", "conv2", {}),
        ("norm2", "lrn", "relu2", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)),
        ("pool2", "maxpool", "norm2", dict(size=3, stride=2)),
        ("conv3", "conv", ("both", "pool2"), dict(kernel=3, stride=1, padding=1, out_channels=192)),
        ("relu3", "relu", "conv3", {}),
        ("conv4", "conv", "relu3", dict(kernel=3, stride=1, padding=1, out_channels=192)),
        ("relu4", "relu", "conv4", {}),
        ("conv5", "conv", "relu4", dict(kernel=3, stride=1, padding=1, out_channels=128)),
        ("relu5", "relu", "conv5", {}),
        ("pool5", "maxpool", "relu5", dict(size=3, stride=2)),
        ("fc6", "linear", ("both", "pool5"), dict(in_features=9216, out_features=2048)),
        ("relu6", "relu", "fc6", {}),
        ("drop6", "dropout", "relu6", dict(p=0.5)),
        ("fc7", "linear", ("both", "drop6"), dict(in_features=4096, out_features=2048)),
        ("relu7", "relu", "fc7", {}),
        ("drop7", "dropout", "relu7", dict(p=0.5)),
    ]
    layers = {l.name: l for l in full_alexnet.layers}
    want_names = {"data", "fc8", "loss"}
    for group, type_, reads, settings in chain:
        for t, s in enumerate(("_a", "_b")):
            layer = layers[group + s]
            want_names.add(layer.name)
            assert (layer.type, layer.tower, layer.group) == (type_, t, group), layer.name
            if reads is None:
                assert layer.inputs == ["data"]
            elif isinstance(reads, tuple):
                assert layer.inputs == both(reads[1]), layer.name
            else:
                assert layer.inputs == [reads + s], layer.name
            for key, value in settings.items():
                assert getattr(layer, key) == value, (layer.name, key)
    fc8, loss = layers["fc8"], layers["loss"]
    assert (fc8.type, fc8.inputs, fc8.tower, fc8.in_features, fc8.out_features) == (
        "linear", both("drop7"), 0, 4096, 1000)  # no ReLU after fc8: the softmax reads it
    assert (loss.type, loss.inputs) == ("softmax_loss", ["fc8"])
    assert set(layers) == want_names
    macs = full_alexnet.forward_macs(by_layer=True)
    paper = dict(conv1=105.4, conv2=223.9, conv3=149.5, conv4=112.1, conv5=74.8, fc6=37.7, fc7=16.8, fc8=4.1)
    assert {k: round(v / 1e6, 1) for k, v in macs.items()} == paper
    assert full_alexnet.forward_macs() == sum(macs.values())


def test_one_device_alexnet_groups():
    """In one device the towers become channel groups: conv2, conv4, conv5 (and the LRN, which
    normalises within a tower) in 2 groups; conv1, conv3 and the FC layers whole."""
    net = models.alexnet(towers=1, width=0.25, devices=["cpu"])
    layers = {l.name: l for l in net.layers}
    assert {n: layers[n].groups for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "norm1", "norm2")} == dict(
        conv1=1, conv2=2, conv3=1, conv4=2, conv5=2, norm1=2, norm2=2)


def test_the_papers_recipe_is_the_alexnet_preset():
    """--model alexnet trains with the paper's settings (section 5 and ALEXNET.md): batch 128, SGD
    with momentum 0.9 and weight decay 0.0005, lr 0.01 divided by 10 when the validation error stops
    improving, at most three cuts, about 90 epochs, weights N(0, 0.01), dropout 0.5 in fc6/fc7,
    224 crops with flips and PCA lighting of standard deviation 0.1, two towers."""
    from convnet import train

    args, _ = train.resolve_args(train.build_parser().parse_args(["--model", "alexnet"]))
    want = dict(batch_size=128, momentum=0.9, weight_decay=5e-4, lr=0.01, schedule="plateau", lr_factor=0.1,
                max_cuts=3, epochs=90, weight_std=0.01, dropout=0.5, crop=224, input_size=224, flip=True,
                lighting=0.1, towers=2)
    assert {k: args[k] for k in want} == want


def test_full_alexnet_paper_init(full_alexnet):
    sd = full_alexnet.state_dict()
    assert set(sd) == set(PAPER_SHAPES)
    for k, a in sd.items():
        assert a.dtype == np.float32 and a.shape == PAPER_SHAPES[k]
        if k.endswith(".weight"):
            bound = 5 * 0.01 / np.sqrt(a.size)  # five standard errors
            assert abs(a.std() - 0.01) < bound and abs(a.mean()) < bound
        else:
            layer = k.split(".")[0]
            np.testing.assert_array_equal(a, 1.0 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)


# (towers, devices, relative tolerances of the loss, the logits and the updates). On a GPU our
# conv3-5 are Winograd transforms and conv2's weight gradient FFTs, rounding otherwise than cuDNN.
CPU_TOL, GPU_TOL = (1e-4, 2e-5, 1e-3), (1e-3, 5e-4, 1e-2)


@pytest.mark.parametrize("placement", [
    pytest.param((2, CPU2, CPU_TOL), id="cpu-2towers"), pytest.param((1, ["cpu"], CPU_TOL), id="cpu-1device"),
    cuda_param((2, ["cuda:0", "cuda:1"], GPU_TOL), "cuda-2towers"), cuda_param((1, ["cuda:0"], GPU_TOL), "cuda-1device")])
def test_full_alexnet_steps_match_pytorch(placement):
    """The paper's net at full size (224x224 input, 1000 classes, the paper's initialisation, SGD
    with momentum and weight decay) against the same graph in PyTorch from the same weights: two
    steps on a batch of two images at the scale of mean-subtracted pixels, dropout off (its masks
    are ours). The losses, the logits and every parameter's update agree (PyTorch on the same
    device, TF32 off). (On the built-in data the same comparison at batch 128 agreed for 10 steps,
    through the paper's recipe diverging: docs/TRAINING.md.)"""
    torch = pytest.importorskip("torch")
    from convnet.torch_net import TorchNet

    towers, devices, (loss_tol, logits_tol, update_tol) = placement
    on_gpu = devices[0].startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA here")
    net = models.alexnet(towers=towers, devices=devices, dropout=0.0)
    before = net.state_dict()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = TorchNet(net, device="cuda:0" if on_gpu else "cpu")
        _steps_match(net, ref, torch, loss_tol, logits_tol)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    after = net.state_dict()
    for k, w in after.items():
        ours, theirs = w - before[k], ref.params[k].detach().cpu().numpy() - before[k]
        assert np.linalg.norm(theirs) > 0, k  # the parameter did move
        err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert err < update_tol, f"{k}: update differs from PyTorch's by {err:.2e} (relative)"


def _steps_match(net, ref, torch, loss_tol, logits_tol):
    """Two SGD steps of net and of its PyTorch twin ref on one batch; their losses and logits agree."""
    opt, lr = SGD(net, lr=0.01), 0.01
    velocity = {k: torch.zeros_like(p) for k, p in ref.params.items()}
    rng = np.random.default_rng(5)
    x = (60 * rng.standard_normal((2, 3, 224, 224))).astype(np.float32)
    y = np.array([3, 917], np.int32)
    for _ in range(2):
        logits, loss = net.forward(x, y, train=True)
        net.backward()
        opt.step()
        tlogits, tloss = ref.forward(x, y, train=True)
        tloss.backward()
        with torch.no_grad():  # the paper's rule, as ops.sgd_update
            for k, p in ref.params.items():
                velocity[k].mul_(0.9).add_(p, alpha=-5e-4 * lr).add_(p.grad, alpha=-lr)
                p.add_(velocity[k])
                p.grad = None
        tl = tlogits.detach().cpu().numpy()
        assert abs(loss - tloss.item()) < loss_tol * abs(tloss.item())
        assert np.abs(logits.numpy() - tl).max() < logits_tol * np.abs(tl).max()


def test_variants_shapes():
    one = models.alexnet(towers=1, devices=["cpu"], num_classes=10, width=0.25)
    two = models.alexnet(towers=2, devices=CPU2, num_classes=10, width=0.25)
    assert one.shapes() == two.shapes()
    # same weights whatever the placement (drawn in the one-device layout from the seed)
    for k, a in one.state_dict().items():
        np.testing.assert_array_equal(a, two.state_dict()[k])
    assert {l.groups for l in one.layers if l.type == "conv"} == {1, 2}
    half = models.alexnet(towers=1, half=True, devices=["cpu"], input_size=224)
    hs = half.shapes()
    assert hs["conv1.weight"] == (48, 3, 11, 11) and hs["conv2.weight"] == (128, 48, 5, 5)
    assert hs["conv3.weight"] == (192, 128, 3, 3) and hs["conv4.weight"] == (192, 192, 3, 3)
    assert hs["conv5.weight"] == (256, 192, 3, 3) and hs["fc6.weight"] == (4096, 9216)
    small_half = models.alexnet(towers=1, half=True, devices=["cpu"], input_size=67, width=0.125, num_classes=5)
    assert {l.groups for l in small_half.layers if l.type in ("conv", "lrn")} == {1}
    x = np.random.default_rng(0).standard_normal((2, 3, 67, 67)).astype(np.float32)
    logits, loss = small_half.forward(x, np.array([1, 4]), train=True)
    small_half.backward()
    assert logits.shape == (2, 5) and abs(loss - np.log(5)) < 0.1  # tiny weights: near-uniform softmax
    assert all(np.isfinite(g).all() for g in small_half.grad_dict().values())
    six = models.alexnet(towers=2, extra_conv=True, devices=CPU2, width=0.25, num_classes=10)
    assert six.shapes()["conv6.weight"] == (64, 32, 3, 3)
    assert [l.name for l in six.order].index("conv6_a") > [l.name for l in six.order].index("pool5_a")
    with pytest.raises(ValueError, match="half"):
        models.alexnet(towers=2, half=True)


def test_alexnet_weight_std():
    # --weight-std reaches the paper's net too (it once reached only the small one), and the
    # config keeps it, so a rebuilt net draws the same weights
    net = models.alexnet(towers=1, devices=["cpu"], num_classes=10, width=0.25, weight_std=0.05)
    w = net.state_dict()["conv3.weight"]
    assert abs(w.std() - 0.05) < 0.005
    assert net.config["weight_std"] == 0.05
    np.testing.assert_array_equal(models.build(net.config, devices=["cpu"]).state_dict()["conv3.weight"], w)
    old = {k: v for k, v in net.config.items() if k != "weight_std"}  # a checkpoint from before
    assert abs(models.build(old, devices=["cpu"]).state_dict()["conv3.weight"].std() - 0.01) < 0.001


def test_build_from_config_roundtrip():
    net = models.small_alexnet(devices=CPU2, seed=3, widths=(8, 8, 8, 8, 8), fc=(16, 16))
    cfg = json.loads(json.dumps(net.config))
    again = models.build(cfg, devices=CPU2)
    assert again.config == net.config
    for k, a in net.state_dict().items():
        np.testing.assert_array_equal(a, again.state_dict()[k])
    other = models.build(cfg, devices=["cpu"], towers=1)
    assert other.shapes() == net.shapes()
    with pytest.raises(ValueError, match="unknown model"):
        models.build({"model": "vgg"})
    # a config's values checked (a damaged checkpoint's config: "x" % 2 was a TypeError about
    # string formatting, 8 "'int' object is not iterable")
    for bad, match in [(dict(widths=8), "widths must be a list of 5 integers, got 8"),
                       (dict(widths=[8, 8, "x", 8, 8]), r"widths\[2\] must be an integer, got 'x'"),
                       (dict(fc=[16, 0]), r"fc\[1\] must be >= 1, got 0"),
                       (dict(conv1=[5, 2]), r"conv1 \(kernel, stride, padding\) must be a list of 3 integers"),
                       (dict(num_classes=2.5), "num_classes must be an integer, got 2.5")]:
        with pytest.raises(ValueError, match=match):
            models.build(dict(cfg, **bad))
    for width in ("x", 0, float("nan")):
        with pytest.raises(ValueError, match="alexnet: width must be"):
            models.alexnet(width=width, devices=CPU2)
    with pytest.raises(ValueError, match=r"alexnet: width 1e-09 leaves the narrowest layer \(96 kernels\) less than one"):
        models.alexnet(width=1e-9, devices=CPU2)  # was built with 2 kernels in every layer, silently
    with pytest.raises(ValueError, match="build: config must be a dict"):
        models.build([("model", "alexnet")])
    raw = models.build({"layers": [{"name": "x", "type": "input", "shape": [2, 3, 3]},
                                   {"name": "f", "type": "linear", "inputs": ["x"], "out_features": 4}]})
    assert raw.shapes() == {"f.weight": (4, 18), "f.bias": (4,)}


def test_model_arguments_of_the_wrong_kind_are_refused():
    """extra_conv="no" built conv6, half="yes" was True, towers="2" was refused as "must be 1 or 2,
    got 2", towers=2.0 as conv1_a's width 4.0; build() of a damaged config ended in "unhashable
    type", "'NoneType' object is not iterable" or "multiple values for keyword argument", and a
    layer net's overrides were ignored; Net(devices=0) was "'int' object is not iterable"."""
    small = dict(widths=(8, 8, 8, 8, 8), fc=(16, 16), devices=CPU2)
    for kw, error, match in [(dict(extra_conv="no"), TypeError, "small_alexnet: extra_conv must be True or False"),
                             (dict(towers="2"), ValueError, "small_alexnet: towers must be an integer, got '2'"),
                             (dict(towers=2.0), ValueError, "small_alexnet: towers must be an integer, got 2.0"),
                             (dict(towers=True), ValueError, "small_alexnet: towers must be an integer, got True"),
                             (dict(towers=3), ValueError, "towers must be 1 or 2, got 3")]:
        with pytest.raises(error, match=match):
            models.small_alexnet(**small, **kw)
    with pytest.raises(TypeError, match="alexnet: half must be True or False, got 'yes'"):
        models.alexnet(towers=1, half="yes", width=0.1, devices=["cpu"])
    with pytest.raises(TypeError, match="alexnet: extra_conv must be True or False, got 1"):
        models.alexnet(extra_conv=1, width=0.1, devices=CPU2)
    net = models.small_alexnet(towers=np.int64(1), extra_conv=np.bool_(True), **dict(small, devices=["cpu"]))
    assert type(net.config["towers"]) is int and net.config["extra_conv"] is True and "conv6.weight" in net.shapes()
    cfg = net.config
    layers = {"layers": [{"name": "x", "type": "input", "shape": [2, 3, 3]},
                         {"name": "f", "type": "linear", "inputs": ["x"], "out_features": 4}]}
    for config, kw, match in [(dict(cfg, model=["alexnet"]), {}, r"build: unknown model \['alexnet'\]"),
                              ({"layers": None}, {}, r"build: config\['layers'\] must be a list of layer specs"),
                              (dict(cfg, devices=["cpu"]), {}, "build: a config holds no devices"),
                              (layers, dict(towers=1), r"build: a net of layers takes no \['towers'\]")]:
        with pytest.raises(ValueError, match=match):
            models.build(config, **kw)
    assert models.build(layers, seed=5).seed == 5  # the one override a layer net takes
    for devices in (0, [0, 1], ["cpu", None], ["cpu:0", 3]):
        with pytest.raises(TypeError, match="Net: devices must be a device name or a list of them"):
            models.small_alexnet(**dict(small, devices=devices))


def test_features_hold_the_net_while_reading_its_outputs():
    """features() released the net between its forward and its read of the outputs: another
    thread's forward there replaced them (a bare KeyError: 'fc7_a', ~270 in 15 s of two threads,
    or that thread's batch). Here the other forward runs exactly when the net is let go."""
    import threading

    net = models.small_alexnet(widths=(8, 8, 8, 8, 8), fc=(16, 16), devices=CPU2)
    x = np.random.default_rng(0).standard_normal((3, 3, 56, 56)).astype(np.float32)
    want = net.features(x, "fc7")
    assert want.shape == (3, 16)

    class Lock:  # the net's lock, running another thread's forward right after each release
        def __init__(self):
            self.lock, self.armed, self.ran = threading.Lock(), True, 0

        def acquire(self, blocking=True):
            return self.lock.acquire(blocking)

        def release(self):
            self.lock.release()
            if self.armed:
                self.armed = False
                other = threading.Thread(target=net.forward, args=(x[:1],))
                other.start()
                other.join()
                self.ran += 1

    net._busy = Lock()
    np.testing.assert_array_equal(net.features(x, "fc7"), want)
    assert net._busy.ran == 1


def test_state_dict_errors():
    net = models.small_alexnet(devices=CPU2, widths=(8, 8, 8, 8, 8), fc=(16, 16))
    sd = net.state_dict()
    bad = dict(sd)
    del bad["conv3.bias"]
    with pytest.raises(ValueError, match="missing keys.*conv3.bias"):
        net.load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        net.load_state_dict({**sd, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=r"fc6.weight has shape \(16, 31\).*\(16, 32\)"):
        net.load_state_dict({**sd, "fc6.weight": np.zeros((16, 31), np.float32)})
    with pytest.raises(TypeError, match="conv1.weight"):
        net.load_state_dict({**sd, "conv1.weight": sd["conv1.weight"].astype(np.int32)})
    with pytest.raises(RuntimeError, match="grad"):
        net.grad_dict()
    # all or nothing: a bad last array once left every array before it loaded
    lively = {k: np.random.default_rng(1).standard_normal(v.shape) for k, v in sd.items()}
    for last, error, match in [(lively["fc8.bias"].astype(np.int32), TypeError, "fc8.bias has dtype int32"),
                               (np.full(sd["fc8.bias"].shape, 1e39), ValueError, "fc8.bias: 1e[+]?39 is past float32")]:
        with pytest.raises(error, match=match):
            net.load_state_dict({**lively, "fc8.bias": last})
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, sd[k])
    for bad in (None, list(sd.items())):
        with pytest.raises(TypeError, match="load_state_dict: expected a dict of arrays"):
            net.load_state_dict(bad)
    net.load_state_dict({**lively, "fc6.weight": convnet.tensor(lively["fc6.weight"])})  # a Tensor too
    np.testing.assert_allclose(net.state_dict()["fc6.weight"], lively["fc6.weight"], rtol=1e-6)


def sgd_reference(w, g, v, lr, momentum=0.9, wd=5e-4):
    v = momentum * v - wd * lr * w - lr * g
    return w + v, v


def test_sgd_matches_paper_rule():
    rng = np.random.default_rng(0)
    net = models.small_alexnet(devices=CPU2, widths=(8, 8, 8, 8, 8), fc=(16, 16), num_classes=4, input_size=40)
    opt = SGD(net, lr=0.05)
    x = rng.standard_normal((3, 3, 40, 40)).astype(np.float32)
    y = np.array([0, 1, 3])
    w = {k: a.astype(np.float64) for k, a in net.state_dict().items()}
    v = {k: np.zeros_like(a) for k, a in w.items()}
    for lr in (0.05, 0.02):  # two steps so that the momentum term is non-zero
        opt.lr = lr
        net.forward(x, y, train=True)
        net.backward()
        g = net.grad_dict()
        opt.step()
        for k in w:
            w[k], v[k] = sgd_reference(w[k], g[k], v[k], lr)
    got, mom = net.state_dict(), opt.state_dict()["momentum"]
    for k in w:
        np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mom[k], v[k], rtol=1e-5, atol=1e-8)
        assert np.abs(mom[k]).max() > 0
    with pytest.raises(RuntimeError, match="backward"):
        opt.step()  # the gradients were used


def test_reduce_on_plateau():
    class Opt:
        lr = 0.01
    opt = Opt()
    sched = ReduceOnPlateau(opt, patience=2, max_cuts=3)
    errors = [0.9, 0.8, 0.8, 0.81, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    cuts = [sched.step(e) for e in errors]
    assert cuts == [False, False, False, True, False, False, True, False, True, False, False, False, False, False]
    assert opt.lr == pytest.approx(1e-5)
    state = sched.state_dict()
    other = ReduceOnPlateau(Opt())
    other.load_state_dict(state)
    assert other.cuts == 3
    # int() took 1.5 as 1; a negative patience cut at every evaluation
    for kw, match in [(dict(patience=1.5), "patience must be an integer, got 1.5"),
                      (dict(patience=-1), "patience must be >= 0, got -1"),
                      (dict(max_cuts="3"), "max_cuts must be an integer"),
                      (dict(factor="0.1"), "factor must be a number"),
                      (dict(threshold=float("nan")), "threshold must be finite and >= 0")]:
        with pytest.raises(ValueError, match=f"ReduceOnPlateau: {match}"):
            ReduceOnPlateau(Opt(), **kw)
    for bad, match in [(dict(state, bad=-1), "bad must be >= 0"), (dict(state, best="x"), "best must be a number")]:
        with pytest.raises(ValueError, match=f"ReduceOnPlateau state: {match}"):
            other.load_state_dict(bad)


def test_step_schedule():
    class Opt:
        lr = 0.01
    opt = Opt()
    sched = StepSchedule(opt, [30, 60, 80])
    assert [sched.step(e) for e in (0, 29, 30, 59, 60, 80, 89)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-5, 1e-5])
    for factor in (-1.0, 0.0, float("nan")):  # -1 made the rate -0.01 at the first milestone: ascent
        with pytest.raises(ValueError, match="StepSchedule: factor must be finite and > 0"):
            StepSchedule(opt, [30], factor=factor)
    with pytest.raises(ValueError, match="StepSchedule: milestones must be an integer, got 2.5"):
        StepSchedule(opt, [30, 2.5])  # was taken as 2
    with pytest.raises(ValueError, match="StepSchedule: milestones must be a list of epochs"):
        StepSchedule(opt, 30)
    with pytest.raises(ValueError, match="StepSchedule state: base_lr must be finite as a float32"):
        sched.load_state_dict(dict(sched.state_dict(), base_lr=float("inf")))


def test_sgd_settings_must_be_finite():
    net = models.small_alexnet(devices=["cpu"], towers=1, num_classes=3, input_size=40, widths=(4, 4, 4, 4, 4),
                               fc=(4, 4))
    for bad, name in ((dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"),
                      (dict(momentum=float("nan")), "momentum"), (dict(weight_decay=float("nan")), "weight_decay"),
                      (dict(lr=-1.0), "lr"), (dict(lr=1e39), "lr")):  # 1e39: finite as a double, not as a float32
        # these were taken, then refused by sgd_update at the first step, after a forward and backward
        with pytest.raises(ValueError, match=f"SGD: {name} must be finite as a float32 and >= 0"):
            SGD(net, **bad)
    for bad in ("0.1", True, None):
        with pytest.raises(TypeError, match="SGD: lr must be a number"):
            SGD(net, lr=bad)
    # the same checks for settings read back from a checkpoint
    opt = SGD(net)
    state = opt.state_dict()
    with pytest.raises(TypeError, match="SGD state: lr must be a number, got '0.1'"):
        opt.load_state_dict({**state, "lr": "0.1"})
    with pytest.raises(ValueError, match="SGD state: momentum_factor must be finite as a float32 and >= 0"):
        opt.load_state_dict({**state, "momentum_factor": float("inf")})
    with pytest.raises(ValueError, match="SGD state: steps must be an integer"):
        opt.load_state_dict({**state, "steps": 1.5})
    # the momentum buffers were loaded before the settings were checked
    rng = np.random.default_rng(2)
    held = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state["momentum"].items()}
    opt.load_state_dict({**state, "momentum": held})
    with pytest.raises(ValueError, match="SGD state: lr must be finite"):
        opt.load_state_dict({**state, "momentum": {k: v + 1 for k, v in held.items()}, "lr": float("nan")})
    for k, v in net.momentum_dict().items():
        np.testing.assert_array_equal(v, held[k])
    with pytest.raises(ValueError, match="SGD state: expected a dict with the momentum buffers"):
        opt.load_state_dict({})  # was a bare KeyError
    opt.load_state_dict({**state, "lr": 0.5})
    assert opt.lr == 0.5
