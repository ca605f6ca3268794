"""Checkpoints: the safetensors format, atomic files, resuming gives the same next step as
never stopping, and clear errors for another model's or a damaged checkpoint."""
import json
import os
import re

import numpy as np
import pytest

from convnet import checkpoint, models
from convnet.checkpoint import CheckpointError
from convnet.optim import SGD

SMALL = dict(num_classes=4, input_size=40, widths=(8, 8, 12, 12, 8), fc=(16, 16), dropout=0.5)
CPU2 = ["cpu:0", "cpu:1"]


def data(step):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((4, 3, 40, 40)).astype(np.float32), rng.integers(0, 4, 4)


def train_step(net, opt, step):
    x, y = data(step)
    _, loss = net.forward(x, y, train=True)
    net.backward()
    opt.step()
    return loss


def test_resume_equals_never_stopping(tmp_path):
    a = models.small_alexnet(devices=CPU2, **SMALL)
    opt_a = SGD(a, lr=0.05)
    for s in range(2):
        train_step(a, opt_a, s)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, a, opt_a, {"epoch": 1, "step": 2, "rng": {"state": [1, 2, 3]}})
    # a fresh process would rebuild the net from the saved config
    b, opt_state, meta = checkpoint.load(path, devices=CPU2)
    opt_b = SGD(b, lr=opt_state["lr"])
    assert meta["epoch"] == 1 and meta["step"] == 2 and meta["rng"] == {"state": [1, 2, 3]}
    assert meta["lr"] == 0.05 and meta["config"] == a.config and b.step == a.step == 2
    for k, m in opt_a.state_dict()["momentum"].items():
        np.testing.assert_array_equal(opt_state["momentum"][k], m)
    loss_a = train_step(a, opt_a, 2)
    loss_b = train_step(b, opt_b, 2)
    assert loss_a == loss_b  # same dropout masks (seed, step), same weights, same momentum
    for k, w in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], w)


def test_two_tower_checkpoint_loads_into_one_device(tmp_path):
    two = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "w.safetensors"
    checkpoint.save(path, two, SGD(two))
    one = models.small_alexnet(towers=1, devices=["cpu"], **SMALL)
    opt = SGD(one, lr=0.3)
    checkpoint.load(path, one, opt)
    assert opt.lr == 0.01
    x, _ = data(0)
    np.testing.assert_allclose(one.forward(x).numpy(), two.forward(x).numpy(), rtol=1e-5, atol=1e-7)


def test_safetensors_package_reads_our_file(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    net = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, net, SGD(net))
    loaded = st.load_file(str(path))
    sd = net.state_dict()
    assert set(loaded) == set(sd) | {"momentum/" + k for k in sd}
    for k, a in sd.items():
        np.testing.assert_array_equal(loaded[k], a)
    # and we read what the package writes, all three dtypes
    theirs = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([-1, 7], np.int32),
              "u": np.array([1, 255], np.uint8)}
    st.save_file(theirs, str(tmp_path / "theirs.safetensors"))
    ours, _, _ = checkpoint.read_safetensors(tmp_path / "theirs.safetensors")
    for k, a in theirs.items():
        assert ours[k].dtype == a.dtype
        np.testing.assert_array_equal(ours[k], a)


def test_format_by_hand(tmp_path):
    path = tmp_path / "t.safetensors"
    checkpoint.write_safetensors(path, {"a": np.array([1.5, -2], np.float32), "b": np.array([[3]], np.int32)})
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "I32", "shape": [1, 1], "data_offsets": [8, 12]}
    assert (8 + n) % 8 == 0 and len(blob) == 8 + n + 12
    assert np.frombuffer(blob[8 + n:8 + n + 8], "<f4").tolist() == [1.5, -2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_another_model_is_refused(tmp_path):
    net = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, net, SGD(net))
    wider = models.small_alexnet(devices=CPU2, **{**SMALL, "fc": (32, 16)})
    with pytest.raises(ValueError, match=r"fc6.weight has shape \(16, 8\).*\(32, 8\)"):
        checkpoint.load(path, wider)
    more = models.small_alexnet(devices=CPU2, extra_conv=True, **SMALL)
    with pytest.raises(ValueError, match="conv6"):
        checkpoint.load(path, more)


def test_save_stopped_anywhere_leaves_a_checkpoint(tmp_path, monkeypatch):
    """A process that dies inside save() (a kill, a third Ctrl-C) leaves the old checkpoint or the new
    one. The weights used to be renamed into place before the metadata: a save stopped between the
    two left new weights under old metadata, refused by load() for their SHA-256: no checkpoint."""
    old_net = models.small_alexnet(devices=CPU2, **SMALL)
    old_opt = SGD(old_net, lr=0.05)
    new_net = models.small_alexnet(devices=CPU2, **SMALL)
    new_opt = SGD(new_net, lr=0.05)
    train_step(new_net, new_opt, 0)
    path = tmp_path / "ckpt.safetensors"
    replace = os.replace
    seen = set()
    for k in range(1, 10):
        checkpoint.save(path, old_net, old_opt, {"epoch": 1})
        renames = []

        def dying(src, dst):  # the process dies just after its k-th rename
            replace(src, dst)
            renames.append(dst)
            if len(renames) == k:
                raise KeyboardInterrupt

        monkeypatch.setattr(os, "replace", dying)
        try:
            checkpoint.save(path, new_net, new_opt, {"epoch": 2})
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", replace)
        net, opt_state, meta = checkpoint.load(path, devices=CPU2)
        want = old_net if meta["epoch"] == 1 else new_net
        seen.add(meta["epoch"])
        for key, w in want.state_dict().items():
            np.testing.assert_array_equal(net.state_dict()[key], w)
        for key, m in want.momentum_dict().items():
            np.testing.assert_array_equal(opt_state["momentum"][key], m)
        if finished:
            break
    assert finished and seen == {1, 2}


def test_damaged_checkpoints(tmp_path):
    net = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, net, SGD(net))
    blob = path.read_bytes()
    meta = path.with_suffix(".json").read_text()

    def expect(match):
        with pytest.raises(CheckpointError, match=match):
            checkpoint.load(path)

    path.write_bytes(blob[: len(blob) // 2])
    expect("truncated")
    path.write_bytes(blob[:5])
    expect("truncated")
    path.write_bytes(b"\xff" * 8 + blob[8:])
    expect("header length")
    n = int.from_bytes(blob[:8], "little")
    path.write_bytes(blob[:8] + b"{" * n + blob[8 + n:])
    expect("corrupt header")
    flipped = bytearray(blob)
    flipped[-3] ^= 0xFF
    path.write_bytes(bytes(flipped))
    expect("does not match")  # same size, one byte changed: caught by the SHA-256 in the metadata
    path.write_bytes(blob)
    path.with_suffix(".json").write_text(meta[:20])
    expect("corrupt metadata")
    path.with_suffix(".json").unlink()
    expect("cannot read its metadata")
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.read_safetensors(tmp_path / "nope.safetensors")
    # The metadata's values (not covered by the weights' hash) came out as bare TypeErrors
    # ("'int' object is not iterable", "not all arguments converted during string formatting")
    path.write_bytes(blob)
    record = json.loads(meta)
    opt = SGD(net)
    for where, value, match, kw in [
            (("config",), 3, "build: config must be a dict", {}),
            (("config", "widths"), 8, r"widths must be a list of 5 integers, got 8", {}),
            (("config", "widths", 2), "x", r"widths\[2\] must be an integer, got 'x'", {}),
            (("config", "conv1"), 1.5, r"conv1 .* must be a list of 3 integers", {}),
            (("net_step",), [1], "net_step must be an integer", {}),
            (("optimizer",), 3, "optimizer must be a JSON object, got 3", {}),
            (("optimizer", "lr"), "x", "its optimizer state .* lr must be a number", dict(net=net, opt=opt))]:
        damaged = json.loads(meta)
        o = damaged["convnet"]
        for k in where[:-1]:
            o = o[k]
        o[where[-1]] = value
        path.with_suffix(".json").write_text(json.dumps(damaged))
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: .*{match}"):
            checkpoint.load(path, **kw)
    path.with_suffix(".json").write_text(json.dumps(record))
    checkpoint.load(path)  # the undamaged pair still loads
    with pytest.raises(ValueError, match=".json"):
        checkpoint.save(tmp_path / "x.json", net)


def test_the_temporaries_of_killed_saves_are_removed(tmp_path):
    """A process killed inside a save leaves its temporary (.NAME.tmpPID: here the new weights
    and momentum) that no later save replaces; remove_stale_temporaries() deletes those of dead
    processes, keeps a live process's, and leaves the checkpoint loading as before."""
    import subprocess
    import sys

    path = tmp_path / "ckpt.safetensors"
    script = (f"import os\nfrom convnet import checkpoint, models\nfrom convnet.optim import SGD\n"
              f"net = models.small_alexnet(devices={CPU2!r}, **{SMALL!r})\n"
              f"checkpoint.save({str(path)!r}, net, SGD(net), {{'epoch': 1}})\n"
              f"os.replace = lambda src, dst: os._exit(9)  # killed before the temporary is renamed\n"
              f"checkpoint.save({str(path)!r}, net, SGD(net), {{'epoch': 2}})\n")
    killed = subprocess.Popen([sys.executable, "-c", script])
    assert killed.wait() == 9
    stale = tmp_path / f"..ckpt.safetensors.pending.tmp{killed.pid}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stale.name, "ckpt.json", "ckpt.safetensors"])
    assert stale.stat().st_size == path.stat().st_size  # a full copy of weights and momentum
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".ckpt.json.tmp{live.pid}"
        busy.write_text("{")
        assert checkpoint.remove_stale_temporaries(tmp_path) == [stale]
        assert not stale.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()
    _, _, meta = checkpoint.load(path, devices=CPU2)
    assert meta["epoch"] == 1
