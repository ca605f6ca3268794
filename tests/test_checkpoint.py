"""Checkpoints: the safetensors format, atomic files, resuming gives the same next step as
never stopping, and clear errors for another model's or a damaged checkpoint."""
import json
import os
import re

import numpy as np
import pytest

import convnet
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
    assert opt_state["lr"] == 0.05 and b.config == a.config and b.step == a.step == 2
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


def _killed_save(path, rename):
    """A process that saves epoch 1 to path, then is killed in its save of epoch 2 just before
    that save's `rename`-th os.replace (1: the side file's, 2: the metadata's, the commit, 3: the
    weights'); returns its pid."""
    import subprocess
    import sys

    script = (f"import os\nfrom convnet import checkpoint, models\nfrom convnet.optim import SGD\n"
              f"net = models.small_alexnet(devices={CPU2!r}, **{SMALL!r})\n"
              f"checkpoint.save({str(path)!r}, net, SGD(net), {{'epoch': 1}})\n"
              f"replace, renames = os.replace, []\n"
              f"def dying(src, dst):\n"
              f"    renames.append(dst)\n"
              f"    if len(renames) == {rename}:\n"
              f"        os._exit(9)\n"
              f"    replace(src, dst)\n"
              f"os.replace = dying\n"
              f"net.step = 5\n"
              f"checkpoint.save({str(path)!r}, net, SGD(net), {{'epoch': 2}})\n")
    killed = subprocess.Popen([sys.executable, "-c", script])
    assert killed.wait() == 9
    return killed.pid


@pytest.mark.parametrize("rename", [1, 2, 3])
def test_the_temporaries_of_killed_saves_are_removed(tmp_path, rename):
    """A process killed inside a save leaves its temporary (.NAME.tmpPID-N) or side file
    (.NAME.pendingPID-N): here a full copy of the new weights and momentum, that no later save
    replaces. remove_stale_temporaries() deletes those of dead processes, keeps a live process's
    and the side file the metadata names (a save killed after its commit: its weights are there),
    and leaves the checkpoint loading as before. The side file was one name, .NAME.pending, for
    every writer: one left by a save killed before its commit was never removed."""
    import subprocess
    import sys

    path = tmp_path / "ckpt.safetensors"
    pid = _killed_save(path, rename)
    left = sorted(p.name for p in tmp_path.iterdir())
    pending = rf"\.ckpt\.safetensors\.pending{pid}-\d+"
    full = {1: [rf"\.{pending}\.tmp{pid}-\d+"],  # the side file's temporary
            2: [rf"\.ckpt\.json\.tmp{pid}-\d+", pending],  # the metadata's temporary and the side file
            3: [pending]}[rename]  # the side file, named by the new metadata
    stale = [tmp_path / n for n in left if n not in (".ckpt.safetensors.lock", "ckpt.json", "ckpt.safetensors")]
    assert len(left) == 3 + len(full) and len(stale) == len(full), left
    for f, pattern in zip(stale, full):
        assert re.fullmatch(pattern, f.name), (f.name, pattern)
    assert max(f.stat().st_size for f in stale) == path.stat().st_size  # a full copy of weights and momentum
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = [tmp_path / f".ckpt.json.tmp{live.pid}", tmp_path / f".ckpt.safetensors.pending{live.pid}-0"]
        for f in busy:
            f.write_text("{")
        kept = stale if rename == 3 else []
        assert checkpoint.remove_stale_temporaries(tmp_path) == [f for f in stale if f not in kept]
        assert all(f.exists() for f in busy + kept) and not any(f.exists() for f in stale if f not in kept)
    finally:
        live.kill()
        live.wait()
    net, _, meta = checkpoint.load(path, devices=CPU2)
    assert (meta["epoch"], net.step) == ((2, 5) if rename == 3 else (1, 0))
    # the next save removes the side files of the saves to its path before it (a live process's too:
    # none of them can be needed once the metadata names the weights in place)
    checkpoint.save(path, net, None, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.json.tmp%d" % live.pid, ".ckpt.safetensors.lock",
                                                          "ckpt.json", "ckpt.safetensors"]
    assert checkpoint.load(path, devices=CPU2)[2]["epoch"] == 3


def _one_of(path, nets):
    """Which of nets the checkpoint at path holds, checked whole: weights, metadata and files."""
    net, _, meta = checkpoint.load(path, devices=CPU2)
    for key, w in nets[meta["who"]].state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[key], w)
    assert sorted(p.name for p in path.parent.iterdir()) == [f".{path.name}.lock", "ckpt.json", path.name]
    return meta["who"]


def test_concurrent_saves_leave_one_whole_checkpoint(tmp_path):
    """Two saves to one path at once, from two threads or two processes, interleaved their steps
    and shared their temporaries (.NAME.tmpPID, .NAME.pending): in 54 of 60 rounds the weights
    and the metadata came from different saves and the checkpoint no longer loaded ("SHA-256
    differs"), and a save failed with FileNotFoundError on a temporary. Now each save holds the
    checkpoint's lock: one of the two checkpoints is left, whole, every time."""
    import subprocess
    import sys
    import threading

    nets = [models.small_alexnet(devices=CPU2, seed=1 + i, **SMALL) for i in range(2)]
    path = tmp_path / "ckpt.safetensors"
    for _ in range(6):
        start, errors = threading.Barrier(2), []

        def job(i):
            start.wait()
            try:
                checkpoint.save(path, nets[i], None, {"who": i})
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        _one_of(path, nets)
    # two processes, each saving its net whenever it reads a line
    script = (f"import sys\nfrom convnet import checkpoint, models\n"
              f"i = int(sys.argv[1])\n"
              f"net = models.small_alexnet(devices={CPU2!r}, seed=1 + i, **{SMALL!r})\n"
              f"print('ready', flush=True)\n"
              f"for line in sys.stdin:\n"
              f"    checkpoint.save({str(path)!r}, net, None, {{'who': i}})\n"
              f"    print('saved', flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    try:
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
        for _ in range(6):
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            assert [p.stdout.readline() for p in procs] == ["saved\n"] * 2  # "" if a save failed
            _one_of(path, nets)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def test_a_save_after_one_stopped_after_its_commit(tmp_path, monkeypatch):
    """A save stopped between its commit and its last rename leaves the checkpoint in its side
    file. The next save wrote its new weights over that same side file (one name, .NAME.pending)
    before its own commit: stopped there, the metadata named weights that were gone, and no
    checkpoint loaded. Each save's side file is its own now."""
    nets = [models.small_alexnet(devices=CPU2, seed=1 + i, **SMALL) for i in range(3)]
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, nets[0], None, {"who": 0})
    replace = os.replace

    def stop_at(k):
        renames = []

        def dying(src, dst):  # stopped just before the k-th rename
            renames.append(dst)
            if len(renames) == k:
                raise KeyboardInterrupt
            replace(src, dst)
        monkeypatch.setattr(os, "replace", dying)

    stop_at(3)  # after the commit
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, nets[1], None, {"who": 1})
    monkeypatch.setattr(os, "replace", replace)
    assert checkpoint.load(path, devices=CPU2)[2]["who"] == 1
    stop_at(2)  # before the commit, its side file written
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, nets[2], None, {"who": 2})
    monkeypatch.setattr(os, "replace", replace)
    net, _, meta = checkpoint.load(path, devices=CPU2)
    assert meta["who"] == 1
    for key, w in nets[1].state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[key], w)


def test_names_differing_after_their_last_dot(tmp_path):
    """The metadata's name was the weights file's with its suffix replaced: "run.epoch1" and
    "run.epoch2" shared run.json, "best.safetensors" and "best.bak" best.json, and the second
    save left the first checkpoint without metadata. A checkpoint's name ends in .safetensors now
    (every caller's did): NAME.safetensors and NAME.json, one pair per name."""
    nets = [models.small_alexnet(devices=CPU2, seed=1 + i, **SMALL) for i in range(2)]
    for name in ["run.epoch1", "best.bak", "noext", "x.json", ".safetensors", ""]:
        with pytest.raises(ValueError, match=f"checkpoint path '{re.escape(name and str(tmp_path / name))}' must name "
                                             r"a file ending in \.safetensors"):
            checkpoint.save(tmp_path / name if name else name, nets[0])
        with pytest.raises(ValueError, match="must name a file ending in .safetensors"):
            checkpoint.load(tmp_path / name if name else name)
    assert list(tmp_path.iterdir()) == []
    for i, name in enumerate(["run.epoch1.safetensors", "run.epoch2.safetensors"]):
        checkpoint.save(tmp_path / name, nets[i], None, {"who": i})
    for i, name in enumerate(["run.epoch1.safetensors", "run.epoch2.safetensors"]):
        net, _, meta = checkpoint.load(tmp_path / name, devices=CPU2)
        assert meta["who"] == i
        np.testing.assert_array_equal(net.state_dict()["fc8.weight"], nets[i].state_dict()["fc8.weight"])


def test_a_bad_devices_argument_is_the_callers_error(tmp_path):
    """load(devices=...) built the net inside the block that reports damaged metadata: devices="gpu"
    was "its metadata ... is damaged: the net has 2 towers but 1 devices were given", devices=0
    "damaged: 'int' object is not iterable". The argument is checked first now, and the net's
    own device errors come through as they are."""
    net = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, net)
    for devices, error, match in [
            ("gpu", ValueError, r"^unknown device 'gpu': use 'cpu', 'cpu:N', 'cuda' or 'cuda:N'$"),
            ("cpu:-1", ValueError, r"^unknown device 'cpu:-1'"),
            (["cpu:0", 5], TypeError, r"^checkpoint.load: devices must be a device name or a list of them, "
                                      r"got \['cpu:0', 5\]$"),
            (0, TypeError, r"^checkpoint.load: devices must be a device name or a list of them, got 0$"),
            (["cpu:0"], ValueError, rf"^checkpoint {re.escape(str(path))}: the net has 2 towers but 1 devices "
                                    r"were given: \['cpu:0'\]$")]:
        with pytest.raises(error, match=match) as e:
            checkpoint.load(path, devices=devices)
        assert not isinstance(e.value, CheckpointError)
    if not convnet.cuda_available():  # a device out of reach: RuntimeError, as tensors say it
        with pytest.raises(RuntimeError, match="^device 'cuda:1' is not available: "):
            checkpoint.load(path, devices=["cpu", "cuda:1"])
    assert checkpoint.load(path, devices=("cpu:1", "cpu:0"))[0].devices == ["cpu:1", "cpu:0"]


def test_meta_comes_back_as_saved(tmp_path):
    """load() put the checkpoint's own config, net_step and lr into the returned meta, over a
    caller's keys of those names."""
    net = models.small_alexnet(devices=CPU2, **SMALL)
    opt = SGD(net, lr=0.05)
    train_step(net, opt, 0)
    path = tmp_path / "ckpt.safetensors"
    mine = {"config": "mine", "net_step": -3, "lr": [1, 2], "epoch": 4}
    checkpoint.save(path, net, opt, mine)
    back, opt_state, meta = checkpoint.load(path, devices=CPU2)
    assert meta == mine
    assert (back.config, back.step, opt_state["lr"]) == (net.config, 1, 0.05)
    assert checkpoint.load(path, devices=CPU2)[2] == mine
    checkpoint.save(path, net, None)
    assert checkpoint.load(path, devices=CPU2)[2] == {}


def test_bad_meta_is_refused_before_anything_is_written(tmp_path):
    """meta=[1, 2] was a bare TypeError ("cannot convert dictionary update sequence element"), and
    a value JSON cannot store was refused only after the whole weights file was written; a key
    'convnet' was overwritten by the checkpoint's own record and lost."""
    net = models.small_alexnet(devices=CPU2, **SMALL)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, net, SGD(net), {"epoch": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = models.small_alexnet(devices=CPU2, seed=7, **SMALL)
    circular = {"a": []}
    circular["a"].append(circular)
    for meta, error, match in [([1, 2], TypeError, "^checkpoint.save: meta must be a dict, got list$"),
                               ({"x": object()}, TypeError, "^checkpoint.save: meta: object is not JSON-serialisable$"),
                               ({(1, 2): 3}, TypeError, "^checkpoint.save: meta: keys must be str, int, float, "),
                               ({"convnet": 1}, ValueError, "^checkpoint.save: meta must not have the key 'convnet'"),
                               # a NaN was written as the bare word NaN, which JSON readers refuse
                               ({"loss": float("nan")}, ValueError,
                                r"^checkpoint.save: meta\['loss'\] is not finite: JSON has no NaN or infinity"),
                               ({"h": [{"a": 1.0}, {"a": np.float32(-np.inf)}]}, ValueError,
                                r"^checkpoint.save: meta\['h'\]\[1\]\['a'\] is not finite"),
                               ({"seen": np.array([0.5, np.nan])}, ValueError,
                                r"^checkpoint.save: meta\['seen'\]\[1\] is not finite"),
                               (circular, ValueError, "^checkpoint.save: meta: Circular reference detected$")]:
        with pytest.raises(error, match=match):
            checkpoint.save(path, other, SGD(other), meta)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # NumPy scalars and arrays are stored as numbers and lists
    checkpoint.save(path, net, None, {"epoch": np.int64(2), "loss": np.float32(0.5), "seen": np.arange(3)})
    meta = checkpoint.load(path, devices=CPU2)[2]
    assert (meta["epoch"], meta["loss"], meta["seen"]) == (2, 0.5, [0, 1, 2])


def test_a_path_that_cannot_be_written_is_refused_up_front(tmp_path):
    """A missing folder was a FileNotFoundError naming the internal temporary
    (.../missing/..x.safetensors.pending.tmpPID); save("") was "PosixPath('.') has an empty name";
    a folder at the checkpoint's path was found after the metadata, the commit, was written."""
    net = models.small_alexnet(devices=CPU2, **SMALL)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "meta.json").mkdir()
    for path, error, match in [
            (tmp_path / "missing" / "x.safetensors", FileNotFoundError,
             f"the folder {tmp_path / 'missing'} does not exist"),
            (tmp_path / "afile" / "x.safetensors", NotADirectoryError, f"{tmp_path / 'afile'} is not a folder"),
            (tmp_path / "dir.safetensors", IsADirectoryError, f"{tmp_path / 'dir.safetensors'} is a folder"),
            (tmp_path / "meta.safetensors", IsADirectoryError, f"{tmp_path / 'meta.json'} is a folder")]:
        with pytest.raises(error, match=f"^checkpoint {re.escape(str(path))}: {re.escape(match)}$"):
            checkpoint.save(path, net)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir.safetensors", "meta.json"]
    assert list((tmp_path / "dir.safetensors").iterdir()) == list((tmp_path / "meta.json").iterdir()) == []
    with pytest.raises(ValueError, match="^checkpoint path '' must name a file ending in .safetensors"):
        checkpoint.save("", net)


def test_loads_during_saves_read_whole_checkpoints(tmp_path):
    """load() takes no lock (it may read where it cannot write): when a save committed between its
    reads of the metadata and of the weights, they matched neither each other nor the side file,
    and a load beside a training run failed ("SHA-256 differs"). It reads the pair again."""
    import threading

    nets = [models.small_alexnet(devices=CPU2, seed=1 + i, **SMALL) for i in range(2)]
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, nets[0], None, {"who": 0})
    done, errors, loads = threading.Event(), [], [0]

    def saver():
        for k in range(30):
            checkpoint.save(path, nets[k % 2], None, {"who": k % 2})
        done.set()

    def loader():
        while not done.is_set():
            try:
                net, _, meta = checkpoint.load(path, devices=CPU2)
                np.testing.assert_array_equal(net.state_dict()["fc8.bias"],
                                              nets[meta["who"]].state_dict()["fc8.bias"])
                loads[0] += 1
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)

    threads = [threading.Thread(target=saver), threading.Thread(target=loader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and loads[0] > 0, (errors[:3], loads)
