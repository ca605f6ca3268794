"""The training and evaluation commands: a short run on a tiny built-in dataset learns; resuming
equals never stopping; a NaN stops the run naming step and layer; an ensemble is the average of
softmax outputs; the pictures are PNGs of the documented size; bad input gives clear errors."""
import functools
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import dead_pid
from convnet import checkpoint, evaluate, plots, train
from convnet.data import builtin, open_dataset

TINY = ["--crop", "32", "--widths", "8,16,16,16,16,32,32", "--conv1", "5,2,2", "--batch-size", "50",
        "--lr", "0.01", "--schedule", "step", "--milestones", "2", "--progress", "no", "--plots", "no",
        "--devices", "cpu:0,cpu:1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny"
    builtin.generate(path, num_train=300, num_val=100, size=36, seed=0, workers=1)
    return path


def _tiny(flags):
    """TINY, less its step schedule's --milestones when the flags ask for the plateau schedule."""
    if "plateau" not in flags:
        return TINY
    i = TINY.index("--milestones")
    return TINY[:i] + TINY[i + 2:]


def run(data_dir, run_dir, *extra, hook=None):
    return train.train(["--data", str(data_dir), "--run-dir", str(run_dir)] + TINY + list(extra), step_hook=hook)


def metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, which="last"):
    net, opt_state, meta = checkpoint.load(str(train.checkpoint_path(run_dir, which)))
    return net.state_dict(), opt_state, meta


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
    """Three uninterrupted epochs (seed 0)."""
    path = tmp_path_factory.mktemp("run") / "a"
    run(data_dir, path, "--epochs", "3")
    return path


def test_short_run_learns(data_dir, tmp_path):
    # 40 images without flips or colour noise: a few dozen steps visibly lower the loss
    run(data_dir, tmp_path, "--epochs", "12", "--limit-train", "40", "--batch-size", "20", "--flip", "no",
        "--lighting", "0", "--weight-std", "0.05", "--lr", "0.003", "--milestones", "10")
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 13))
    losses = [r["train_loss"] for r in records]
    assert all(math.isfinite(l) for l in losses)
    assert losses[-1] < losses[0] - 0.05 and losses[-1] < math.log(10), losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 8, losses  # mostly falling, step by step
    # the step schedule cut the rate after epoch 10
    assert records[9].get("lr_cut_to") == pytest.approx(0.0003) and records[10]["lr"] == pytest.approx(0.0003)
    assert "lr_cut_to" not in records[8]
    for r in records:
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 1


def test_resume_equals_never_stopping(data_dir, run_a, tmp_path):
    # Stop once at an epoch boundary (--epochs 1, then resume) and once mid-epoch (Ctrl-C at step 8).
    run(data_dir, tmp_path, "--epochs", "1")

    def interrupt(net, step):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(train.TrainingError) as e:
        train.train(["--resume", str(tmp_path), "--epochs", "3"], step_hook=interrupt)
    assert e.value.code == 130
    _, _, meta = weights(tmp_path)
    assert (meta["train"]["epoch"], meta["train"]["batch"], meta["train"]["step"]) == (1, 2, 8)
    bars = []

    class Counted(train.Progress):  # each epoch's bar ends full: the resumed one's total was 6 + 2
        def close(self):
            bars.append((self._initial, self.n, self.total))
            super().close()

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "Progress", Counted)
        train.train(["--resume", str(tmp_path), "--epochs", "3"])
    assert bars == [(2, 6, 6), (0, 6, 6)]
    got, got_opt, got_meta = weights(tmp_path)
    want, want_opt, want_meta = weights(run_a)
    assert got_meta["train"]["step"] == want_meta["train"]["step"] == 18
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise on the CPU
    assert got_opt["momentum"].keys() == want_opt["momentum"].keys()
    for k in want_opt["momentum"]:
        np.testing.assert_array_equal(got_opt["momentum"][k], want_opt["momentum"][k], err_msg=k)
    a = [json.loads(l) for l in (run_a / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]


def test_interrupt_inside_an_update_keeps_the_last_checkpoint(data_dir, run_a, tmp_path, monkeypatch):
    """A second Ctrl-C lands at once, maybe between two parameters' updates: the checkpoint written
    then held half of step 8's update under the position of step 8, and a resumed run redid the
    step on top of it (silently not the run that never stopped). Now nothing is written then."""
    import convnet

    run(data_dir, tmp_path, "--epochs", "1")
    sgd_update, at = convnet.ops.sgd_update, {"step": None, "calls": 0}

    def note_step(net, step):
        at["step"] = step

    def update(*a, **k):
        if at["step"] == 8:
            at["calls"] += 1
            if at["calls"] == 3:
                raise KeyboardInterrupt
        sgd_update(*a, **k)

    monkeypatch.setattr(convnet.ops, "sgd_update", update)
    with pytest.raises(train.TrainingError) as e:
        train.train(["--resume", str(tmp_path), "--epochs", "3"], step_hook=note_step)
    assert e.value.code == 130 and at["calls"] == 3
    monkeypatch.setattr(convnet.ops, "sgd_update", sgd_update)
    _, _, meta = weights(tmp_path)
    assert (meta["train"]["epoch"], meta["train"]["batch"], meta["train"]["step"]) == (1, 0, 6)
    train.train(["--resume", str(tmp_path), "--epochs", "3"])
    got, _, _ = weights(tmp_path)
    want, _, _ = weights(run_a)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_nan_stops_with_step_and_layer(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path, "--epochs", "1")
    before, _, _ = weights(tmp_path)

    def poison(net, step):
        if step == 9:
            state = net.state_dict()
            state["conv2.weight"][3, 1, 2, 2] = np.nan
            net.load_state_dict(state)

    with pytest.raises(train.TrainingError) as e:
        train.train(["--resume", str(tmp_path), "--epochs", "2"], step_hook=poison)
    msg = str(e.value)
    assert e.value.code == train.EXIT_NONFINITE != 0
    # ReLU maps NaN to 0, so the loss stays finite: the weight check after the update finds it
    assert "step 9" in msg and "layer conv2" in msg and "conv2.weight" in msg, msg

    def poison_fc8(net, step):
        if step == 7:
            state = net.state_dict()
            state["fc8.weight"][2, 5] = np.inf
            net.load_state_dict(state)

    with pytest.raises(train.TrainingError) as e:
        # without the weight check, the loss (through the softmax's own finiteness check) finds it
        train.train(["--resume", str(tmp_path), "--epochs", "2", "--check-every", "0"], step_hook=poison_fc8)
    msg = str(e.value)
    assert e.value.code == train.EXIT_NONFINITE
    assert "the loss became nan at step 7" in msg and "output at layer fc8" in msg and "fc8.weight" in msg, msg
    after, _, meta = weights(tmp_path)  # the last good checkpoint still loads, unchanged
    assert meta["train"]["step"] == 6
    for k in before:
        assert np.all(np.isfinite(after[k]))
        np.testing.assert_array_equal(after[k], before[k])
    # and through the command line: the message on stderr, a non-zero exit
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(data_dir), "--run-dir", str(tmp_path / "lr"), "--epochs", "1"] + TINY
                   + ["--lr", "1e30"])
    assert e.value.code == train.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "training stopped: the loss became" in err and re.search(r"at step [1-5] ", err) and "layer" in err, err


def _centre_probs(net, ds, crop, flip=False, corner=None):
    """Softmax of the net on one view of every validation image, computed here from NumPy."""
    images = np.asarray(ds.val.images, np.float32) - ds.mean
    h = images.shape[1]
    y0 = x0 = (h - crop) // 2
    if corner is not None:
        y0, x0 = corner
    x = images[:, y0:y0 + crop, x0:x0 + crop]
    if flip:
        x = x[:, :, ::-1]
    logits = net.forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), train=False).numpy()
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_ensemble_is_average_of_softmax(data_dir, run_a, tmp_path):
    run(data_dir, tmp_path, "--epochs", "1", "--seed", "1")
    ds = open_dataset(data_dir)
    crop, h = 32, 36
    corners = [((h - crop) // 2, (h - crop) // 2), (0, 0), (0, h - crop), (h - crop, 0), (h - crop, h - crop)]
    settings = evaluate.evaluate([str(run_a), str(tmp_path)], str(data_dir), views=(1, 10), batch_size=30)
    nets = [checkpoint.load(str(train.checkpoint_path(p)))[0] for p in (run_a, tmp_path)]
    centre = [_centre_probs(n, ds, crop) for n in nets]
    ten = [np.mean([_centre_probs(n, ds, crop, f, c) for f in (False, True) for c in corners], axis=0) for n in nets]
    labels = np.asarray(ds.val.labels)
    for setting, per_net in zip(settings, (centre, ten)):
        rows = setting["rows"]
        assert len(rows) == 3 and rows[2]["name"] == "average of 2 CNNs"
        for r, p in zip(rows, per_net + [np.mean(per_net, axis=0)]):
            np.testing.assert_allclose(r["probs"], p, rtol=1e-4, atol=1e-6)
            top = np.argsort(-p, axis=1)
            assert r["top1"] == pytest.approx(np.mean(top[:, 0] != labels))
            assert r["top5"] == pytest.approx(np.mean(~(top[:, :5] == labels[:, None]).any(1)))
    table = evaluate.format_table(settings[1])
    assert "10 patches" in table and "| average of 2 CNNs |" in table


def test_a_net_with_nan_weights_is_refused(run_a, tmp_path, capsys):
    """A net saved after it diverged: evaluate scored its NaN outputs as class 0 (argmax of NaN),
    giving error rates that looked like a net's; plots drew its kernels as noise."""
    net, opt_state, meta = checkpoint.load(str(train.checkpoint_path(run_a)))
    weights = net.state_dict()
    weights["fc8.bias"][3] = np.nan
    weights["conv2.weight"][0, 0, 0, 0] = np.inf
    net.load_state_dict(weights)
    checkpoint.save(tmp_path / "diverged.safetensors", net, meta=meta)
    with pytest.raises(evaluate.EvaluateError, match=r"diverged.safetensors: conv2.weight, fc8.bias hold NaN or inf"):
        evaluate.evaluate([str(tmp_path / "diverged.safetensors")])
    err = _exit(plots.main, [str(tmp_path / "diverged.safetensors"), "--out", str(tmp_path)], capsys)
    assert "conv2.weight, fc8.bias hold NaN or infinite weights" in err and not list(tmp_path.glob("*.png")), err


def _png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_pictures(run_a, tmp_path, capsys):
    plots.main([str(run_a), "--out", str(tmp_path), "--train-subset", "200"])
    want = {"learning_curves.png": plots.CURVES_SIZE, "conv1_kernels.png": plots.KERNELS_SIZE,
            "predictions.png": plots.PREDICTIONS_SIZE, "neighbours.png": plots.NEIGHBOURS_SIZE}
    for name, size in want.items():
        assert _png_size(tmp_path / name) == size, name
    # Figure 3's tiles: one block per tower, each kernel scaled around grey
    net, _, _ = checkpoint.load(str(train.checkpoint_path(run_a)))
    w = net.state_dict()["conv1.weight"]
    k, c, h, wd = w.shape
    tiles = plots.kernel_tiles(w, 2, cols=4)
    rows = -(-(k // 2) // 4)
    assert len(tiles) == 2 and tiles[0].shape == (1 + rows * (h + 1), 1 + 4 * (wd + 1), 3)
    first_of_tower_2 = w[k // 2]
    np.testing.assert_allclose(tiles[1][1:1 + h, 1:1 + wd],
                               0.5 + 0.5 * first_of_tower_2.transpose(1, 2, 0) / np.abs(first_of_tower_2).max(),
                               rtol=1e-6)


def test_a_picture_cut_short_leaves_the_old_one(run_a, tmp_path, monkeypatch):
    """Pictures were written in place: a write cut short (a full disk, a Ctrl-C) left half a PNG
    where the last one was."""
    plots.main([str(run_a), "--out", str(tmp_path), "--train-subset", "50"])
    old = (tmp_path / "learning_curves.png").read_bytes()
    real = plots._pyplot().Figure.savefig

    def cut_short(fig, f, **kw):
        real(fig, f, **kw)
        if isinstance(f, (str, os.PathLike)):
            os.truncate(f, 100)
        else:
            f.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots._pyplot().Figure, "savefig", cut_short)
    with pytest.raises(SystemExit):
        plots.main([str(run_a), "--out", str(tmp_path), "--train-subset", "50"])
    assert (tmp_path / "learning_curves.png").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["learning_curves.png", "conv1_kernels.png", "predictions.png", "neighbours.png"])  # no temporaries left
    assert not plots._pyplot().get_fignums()  # and the figure closed


def test_neighbours_are_the_nearest_rows():
    """Figure 4's search: for each query, the pool rows nearest in Euclidean distance, in order."""
    rng = np.random.default_rng(3)
    queries, pool = rng.standard_normal((5, 17)), rng.standard_normal((40, 17))
    pool[7] = queries[2] + 1e-3  # a near-copy of a query is its first neighbour
    got = plots.nearest_rows(queries.astype(np.float32), pool.astype(np.float32), 6)
    brute = np.linalg.norm(queries[:, None, :] - pool[None, :, :], axis=2)
    np.testing.assert_array_equal(got, np.argsort(brute, axis=1, kind="stable")[:, :6])
    assert got[2, 0] == 7 and got.shape == (5, 6)


def test_pictures_with_a_damaged_train_record(data_dir, run_a, tmp_path, capsys):
    r = _copy_run(run_a, tmp_path, ("train", "args"), 5)  # was AttributeError: 'int' object has no attribute 'get'
    plots.main([str(r), "--out", str(tmp_path / "p"), "--data", str(data_dir), "--train-subset", "50"])
    out = capsys.readouterr()
    assert "the train record of" in out.err and "'args' is 5, not a JSON object): not used" in out.err
    assert _png_size(tmp_path / "p" / "predictions.png") == plots.PREDICTIONS_SIZE


def test_pictures_of_a_damaged_or_odd_run(data_dir, run_a, tmp_path, capsys, monkeypatch):
    """Each was a traceback: a metrics line cut short by a crash (JSONDecodeError) or damaged
    (KeyError, TypeError, "Unknown format code"); --train-subset 0 / -1 (after three pictures);
    --out at a file; --data with another class count (IndexError, or predictions labelled with
    the wrong names) or smaller images; no matplotlib. A recorded data folder that had moved drew
    nothing at all; a training set smaller than a row of neighbours was an IndexError."""
    r = _copy_run(run_a, tmp_path)
    lines = (r / "metrics.jsonl").read_text().splitlines()
    damaged = [lines[0], lines[1][:40], "not json", json.dumps({"epoch": 2}), json.dumps([1]),
               json.dumps(dict(json.loads(lines[1]), lr_cut_to="x")), lines[2]]
    (r / "metrics.jsonl").write_text("\n".join(damaged) + "\n")
    out = tmp_path / "p"
    plots.main([str(r), "--out", str(out), "--train-subset", "50"])
    err = capsys.readouterr().err
    for number, why in [(2, "not JSON"), (3, "not JSON"), (4, "train_loss is None"), (5, "not a JSON object"),
                        (6, "lr_cut_to is 'x'")]:
        assert f"metrics.jsonl line {number} left out of the learning curves: {why}" in err, err
    assert sorted(f.name for f in out.iterdir()) == ["conv1_kernels.png", "learning_curves.png",
                                                     "neighbours.png", "predictions.png"]
    (tmp_path / "afile").write_text("x")
    five = tmp_path / "five"
    builtin.generate(five, num_train=20, num_val=10, size=36, seed=0, workers=1, num_classes=5)
    small = tmp_path / "small"
    builtin.generate(small, num_train=20, num_val=10, size=24, seed=0, workers=1)
    for argv, message in [(["--train-subset", "0"], "--train-subset must be >= 1, got 0"),
                          (["--train-subset", "-1"], "--train-subset must be >= 1, got -1"),
                          (["--out", str(tmp_path / "afile")], "afile is not a folder"),
                          (["--out", str(tmp_path / "afile" / "x")], "afile is not a folder"),
                          (["--out", ""], "--out: the folder name is empty"),
                          (["--data", str(five)], "the net has 10 classes, the data at"),
                          (["--data", str(small)], "the net takes 32x32 crops, larger than the 24x24 images")]:
        err = _exit(plots.main, [str(r), "--out", str(tmp_path / "q")] + argv if argv[0] != "--out" else
                    [str(r)] + argv, capsys)
        assert message in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "q").exists()
    # the recorded data moved: the pictures that need no data are drawn, with a word on the rest
    moved = _copy_run(run_a, tmp_path / "m", ("train", "args", "data"), str(tmp_path / "gone"))
    plots.main([str(moved), "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err
    assert "no predictions or neighbours: the data" in err and "gone" in err and "pass --data" in err, err
    assert sorted(f.name for f in (tmp_path / "m2").iterdir()) == ["conv1_kernels.png", "learning_curves.png"]
    # a training set smaller than a row of neighbours (6)
    net = checkpoint.load(str(train.checkpoint_path(run_a)))[0]
    ds = open_dataset(str(data_dir))
    assert plots.neighbours(net, ds, 32, tmp_path / "n.png", train_subset=3) == tmp_path / "n.png"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    err = _exit(plots.main, [str(r), "--out", str(tmp_path / "q")], capsys)
    assert "the pictures need matplotlib" in err and "--plots no" in err, err


def test_a_net_of_layers_is_scored_and_drawn(data_dir, tmp_path, capsys):
    """A checkpoint of a net built from a list of layers (no conv1, no fc7, no input_size in its
    config): plots was a KeyError ('conv1.weight'), evaluate an int(None) TypeError."""
    from convnet import models

    net = models.build({"layers": [{"name": "data", "type": "input", "shape": [3, 32, 32]},
                                   {"name": "fc", "type": "linear", "inputs": ["data"], "out_features": 10},
                                   {"name": "loss", "type": "softmax_loss", "inputs": ["fc"]}]})
    ckpt = tmp_path / "net.safetensors"
    checkpoint.save(ckpt, net, None)
    evaluate.main([str(ckpt), "--data", str(data_dir), "--limit", "20"])
    assert "| net.safetensors |" in capsys.readouterr().out.replace(f"{tmp_path.name}/", "")
    plots.main([str(ckpt), "--out", str(tmp_path / "p"), "--data", str(data_dir)])
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["predictions.png"]


def test_a_picture_that_fails_leaves_the_run_complete(data_dir, tmp_path, monkeypatch, capsys):
    """A picture's failure at the end of training (a folder in a picture's place, a full disk, no
    matplotlib) turned the finished run into a traceback and exit 1."""
    def fail(*a, **kw):
        raise IsADirectoryError("[Errno 21] Is a directory: 'predictions.png'")

    monkeypatch.setattr(plots, "draw_all", fail)
    assert train.main(["--data", str(data_dir), "--run-dir", str(tmp_path / "r"), "--epochs", "1"] + TINY
                      + ["--plots", "yes"]) in (0, None)
    err = capsys.readouterr().err
    assert "pictures: not drawn (IsADirectoryError:" in err and "python -m convnet.plots" in err, err
    assert train.checkpoint_path(tmp_path / "r").exists()


def _exit(fn, argv, capsys):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code not in (0, None)
    return capsys.readouterr().err


def test_bad_input(data_dir, run_a, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _exit(train.main, ["--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")], capsys)
    assert "not a prepared dataset" in err
    err = _exit(train.main, ["--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r")], capsys)
    assert "does not exist" in err
    # the built-in dataset's cache folder holding something else: refused, named, not blamed on flags
    cache = tmp_path / "cache"
    (cache / builtin.default_path(size=24, num_train=20, num_val=10).name).mkdir(parents=True)
    (cache / builtin.default_path(size=24, num_train=20, num_val=10).name / "notes.txt").write_text("mine")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CONVNET_DATA", str(cache))
        err = _exit(train.main, ["--image-size", "24", "--crop", "24", "--num-train", "20", "--num-val", "10",
                                 "--run-dir", str(tmp_path / "r")], capsys)
    assert "already holds files that are not the built-in dataset's (notes.txt)" in err and "--num-train" not in err
    for devices in ("cuda:7", "tpu:0", "cpu:0,cpu:1,cpu:2"):
        err = _exit(train.main, ["--data", str(data_dir), "--devices", devices, "--run-dir", str(tmp_path / "r")],
                    capsys)
        assert "--devices" in err, err
    # a checkpoint of another model: resuming it as alexnet, scoring it on data with other classes
    err = _exit(train.main, ["--resume", str(run_a), "--model", "alexnet"], capsys)
    assert "--model alexnet differs" in err
    other = tmp_path / "other"
    builtin.generate(other, num_train=20, num_val=20, size=36, seed=0, num_classes=4, workers=1)
    err = _exit(evaluate.main, [str(run_a), "--data", str(other)], capsys)
    assert "4" in err and "classes" in err
    (tmp_path / "junk").write_text("not a checkpoint")
    err = _exit(evaluate.main, [str(tmp_path / "junk")], capsys)
    assert "cannot load a checkpoint" in err
    # a traceback from range() or np.concatenate, or (--limit -30) all but the last 30 images scored
    # --json "" was ignored (no file, no word); --views 10,10 printed the same table twice
    for flags, message in [(["--batch-size", "0"], "--batch-size must be >= 1"),
                           (["--limit", "-30"], "--limit must be >= 1"), (["--limit", "0"], "--limit must be >= 1"),
                           (["--json", ""], "--json: the file name is empty"),
                           (["--views", "10,10"], "--views must be 1, 10 or 1,10, got '10,10'")]:
        err = _exit(evaluate.main, [str(run_a), "--data", str(data_dir)] + flags, capsys)
        assert message in err and "Traceback" not in err, err
    err = _exit(train.main, ["--resume", str(tmp_path / "nowhere")], capsys)
    # was "checkpoint path ... must name a file ending in .safetensors"
    assert "nowhere: no such run folder or checkpoint" in err and "--run-dir" in err, err
    # tracebacks: a net's crop larger than the data's images; --json into a missing folder, after the table
    small = tmp_path / "small"
    builtin.generate(small, num_train=20, num_val=20, size=24, seed=0, workers=1)
    err = _exit(evaluate.main, [str(run_a), "--data", str(small)], capsys)
    assert "takes 32x32 crops, larger than the 24x24 images" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run_a), "--data", str(data_dir), "--json", str(tmp_path / "missing" / "e.json")])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "--json" in err and "does not exist" in err and out == "", (out, err)


def _copy_run(run_a, tmp_path, where=(), value=None):
    """A copy of run_a, with the value at `where` in its last checkpoint's metadata replaced."""
    r = tmp_path / "r"
    shutil.copytree(run_a, r)
    if where:
        meta_file = train.checkpoint_path(r).with_suffix(".json")
        record = json.loads(meta_file.read_text())
        functools.reduce(lambda o, k: o[k], where[:-1], record)[where[-1]] = value
        meta_file.write_text(json.dumps(record))
    return r


def test_evaluate_never_writes_json_over_the_run(data_dir, run_a, tmp_path, capsys):
    """--json RUN/checkpoint-last.json wrote the errors over the checkpoint's metadata: it no
    longer loaded, and --resume RUN failed. The checkpoints' and their runs' files are refused."""
    r = _copy_run(run_a, tmp_path)
    before = {f.name: f.read_bytes() for f in r.iterdir()}
    os.link(r / "checkpoint-last.json", tmp_path / "hard.json")
    for source, target in [(r, r / "checkpoint-last.json"), (r, r / "checkpoint-last.safetensors"),
                           (r / "checkpoint-best.json", tmp_path / "r" / ".." / "r" / "checkpoint-best.safetensors"),
                           (r, tmp_path / "hard.json"), (r, r / "metrics.jsonl"), (r, r / "args.json")]:
        err = _exit(evaluate.main, [str(run_a), str(source), "--data", str(data_dir), "--json", str(target)], capsys)
        assert f"--json {target}: the errors would overwrite " in err and "a file of a checkpoint or run" in err, err
    assert {f.name: f.read_bytes() for f in r.iterdir()} == before
    evaluate.main([str(r), "--data", str(data_dir), "--json", str(r / "errors.json"), "--limit", "10"])
    assert [s["views"] for s in json.loads((r / "errors.json").read_text())] == [1]


@pytest.mark.parametrize("where, value, why", [
    ((), 5, "it is 5, not a JSON object"),
    (("args",), 5, "'args' is 5, not a JSON object"),
    (("args", "data"), 5, "args 'data' is 5, which --data cannot give"),
])
def test_evaluate_with_a_damaged_train_record(data_dir, run_a, tmp_path, capsys, where, value, why):
    """The train record is not covered by the weights' hash: a damaged one was an AttributeError or
    TypeError. It is refused with train's reason; with --data the net is scored without it."""
    r = _copy_run(run_a, tmp_path, ("train",) + where, value)
    meta_file = train.checkpoint_path(r).with_suffix(".json")
    err = _exit(evaluate.main, [str(r)], capsys)
    assert f"convnet-evaluate: the train record in {meta_file} is damaged ({why}): " in err, err
    assert err.rstrip().endswith("pass --data") and "Traceback" not in err, err
    evaluate.main([str(r), "--data", str(data_dir), "--limit", "10"])
    assert "| r/checkpoint-last.safetensors |" in capsys.readouterr().out


def test_evaluate_when_the_data_has_moved(run_a, tmp_path, capsys):
    """The user passed no --data, and the message said "--data: ... does not exist"."""
    r = _copy_run(run_a, tmp_path, ("train", "args", "data"), str(tmp_path / "moved"))
    err = _exit(evaluate.main, [str(r)], capsys)
    assert err == (f"convnet-evaluate: the data {train.checkpoint_path(r)} was trained on: {tmp_path / 'moved'} "
                   f"does not exist; pass --data with its folder\n"), err


def test_evaluate_devices_per_tower(data_dir, run_a, tmp_path, capsys):
    """--devices was checked against two towers whatever the net: a 1-tower net was told "one per
    tower (2)" and took two devices silently."""
    from convnet import models

    one = tmp_path / "one.safetensors"
    checkpoint.save(str(one), models.small_alexnet(input_size=32, widths=[8, 16, 16, 16, 16], fc=[32, 32],
                                                   towers=1, devices=["cpu:0"]))
    for source, devices, message in [(one, "cpu,cpu,cpu", "(1), got 3"), (one, "cpu:0,cpu:1", "(1), got 2"),
                                     (run_a, "cpu,cpu,cpu", "(2), got 3")]:
        err = _exit(evaluate.main, [str(source), "--data", str(data_dir), "--devices", devices], capsys)
        assert f"convnet-evaluate: --devices: give one device or one per tower {message}" in err, err
    assert evaluate.load_net(str(one), "cpu")[0].devices == ["cpu"]
    assert evaluate.load_net(str(run_a), "cpu")[0].devices == ["cpu", "cpu"]


def test_evaluate_data_builtin(data_dir, run_a, monkeypatch, capsys):
    """--data builtin, open_dataset's name for the default built-in dataset, was "does not exist"."""
    calls = []
    monkeypatch.setattr(builtin, "default_path", lambda **size: calls.append(size) or data_dir)
    monkeypatch.setattr(builtin, "ensure", lambda path, **size: path)  # data_dir is there: not 12000 images
    evaluate.main([str(run_a), "--data", "builtin", "--limit", "10"])
    assert calls == [dict(size=64, num_train=10000, num_val=2000)]  # the dataset of a run without --data
    assert f"validation set of {data_dir} (10 images)" in capsys.readouterr().out


def test_evaluate_refuses_an_ensemble_of_different_datasets(data_dir, run_a, tmp_path, capsys):
    """Nets trained on different datasets were averaged silently, though their class indices may
    name different classes; the checkpoints record a fingerprint of their dataset."""
    r = _copy_run(run_a, tmp_path, ("train", "data_fingerprint"), "0" * 64)
    err = _exit(evaluate.main, [str(run_a), str(r), "--data", str(data_dir)], capsys)
    assert (f"convnet-evaluate: {train.checkpoint_path(run_a)} and {train.checkpoint_path(r)} were trained on "
            f"different datasets (their classes, labels or images differ)") in err, err


@pytest.mark.parametrize("flags, message", [
    # tracebacks once the run folder was written (Loader, SGD's first step, the schedule)
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be finite (as a float32) and >= 0"),
    (["--momentum", "inf"], "--momentum must be finite"),
    (["--milestones", "a,b"], "--milestones must be comma-separated epochs"),
    (["--lr-factor", "2", "--schedule", "plateau"], "--lr-factor must be in"),
    (["--lighting", "-1"], "--lighting must be finite (as a float32) and >= 0"),
    # silently wrong: no training, every image but the last 100, the rate -0.01 after epoch 2,
    # no lighting, epochs of no step reporting a training loss of 0.0000
    (["--epochs", "-1"], "--epochs must be >= 1"),
    (["--limit-train", "-100"], "--limit-train must be >= 1"),
    (["--lr-factor", "-1"], "--lr-factor must be in"),
    (["--lighting", "nan"], "--lighting must be finite (as a float32) and >= 0"),
    (["--limit-train", "20", "--batch-size", "50"], "20 training images make no full batch of 50"),
    # a negative patience cut the rate at every epoch
    (["--patience", "-1", "--schedule", "plateau"], "--patience must be >= 0"),
    (["--max-cuts", "-2", "--schedule", "plateau"], "--max-cuts must be >= 0"),
    # finite as a float64, not as the kernels' float32: tracebacks, an inf first batch, inf weights
    (["--lr", "1e39"], "--lr must be finite (as a float32) and >= 0, got 1e+39"),
    (["--lighting", "1e39"], "--lighting must be finite (as a float32)"),
    (["--weight-std", "1e39"], "--weight-std must be finite (as a float32)"),
    # trained on to a loss of 1e11, exit 0; stopped at the first cut with a traceback, unresumable
    (["--momentum", "5"], "--momentum must be below 1"),
    (["--lr-factor", "1e30", "--milestones", "1,2"], "--lr-factor must be small enough that --lr times it"),
    # a milestone of 0 or -5 meant 1; "8,,16" said "invalid literal for int()", naming no flag
    (["--milestones", "0"], "--milestones must be comma-separated epochs >= 1, e.g. 30,60,80, got '0'"),
    (["--milestones", "1,,2"], "--milestones must be comma-separated epochs >= 1"),
    (["--widths", "8,,16,16,16,32,32"], "--widths must be 7 comma-separated sizes (conv1..conv5, fc6, fc7)"),
    (["--widths", ""], "--widths must be 7 comma-separated sizes"),
    (["--conv1", "5,2"], "--conv1 must be kernel,stride,padding (e.g. 5,2,2), got '5,2'"),
    # accepted, recorded in args.json and ignored
    (["--width", "0.5"], "--width applies only to --model alexnet, not to --model small"),
    (["--extra-conv"], "--extra-conv applies only to --model alexnet"),
    (["--patience", "3"], "--patience applies only to --schedule plateau, not to --schedule step"),
    (["--num-train", "5"], "--num-train applies only to the built-in dataset, not to --data"),
    (["--input-size", "36"], "--input-size 36 differs from --crop 32: the net takes the crop"),
    # a traceback: out of host memory
    (["--widths", "8,16,16,16,16,32,100000000000"], "cannot build the small net: "),
])
def test_bad_numbers_stop_before_anything_is_written(data_dir, tmp_path, capsys, flags, message):
    err = _exit(train.main, ["--data", str(data_dir), "--run-dir", str(tmp_path / "r")] + _tiny(flags) + flags, capsys)
    assert message in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_flags_refused_before_the_builtin_data_is_made(tmp_path, capsys, monkeypatch):
    # the data was generated (12,000 images by default), then --crop or the schedule refused
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "cache"))
    for flags, message in [(["--image-size", "24", "--crop", "32"], "--crop must be at most the built-in images' "
                                                                    "--image-size 24, got 32"),
                           (["--num-val", "0", "--schedule", "plateau"], "--num-val 0 leaves no validation split")]:
        err = _exit(train.main, ["--run-dir", str(tmp_path / "r")] + flags, capsys)
        assert message in err, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()


def test_nonfinite_at_step_0_does_not_blame_the_rate(data_dir, tmp_path, capsys):
    # --weight-std 1e20: the loss was NaN before any update, and the message said "try a smaller --lr"
    err = _exit(train.main, ["--data", str(data_dir), "--run-dir", str(tmp_path / "r")] + TINY +
                ["--weight-std", "1e20", "--epochs", "1"], capsys)
    assert "at step 0" in err and "no update had run yet: look at --weight-std and the data" in err, err
    assert "smaller --lr" not in err


def test_args_json_records_the_input_size_built(data_dir, tmp_path):
    run(data_dir, tmp_path, "--epochs", "1", "--limit-train", "50")  # TINY's --crop 32: the small preset said 56
    assert json.loads((tmp_path / "args.json").read_text())["input_size"] == 32


def test_resume_keeps_the_runs_devices(data_dir, tmp_path, monkeypatch):
    """--resume without --devices continues on the run's devices, not this machine's default
    (seen on a GPU machine: a CPU run resumed on the GPU and drifted by float rounding)."""
    run(data_dir, tmp_path, "--epochs", "1")
    import convnet

    monkeypatch.setattr(convnet, "cuda_available", lambda: True)  # the default would now be cuda:0,cuda:1
    train.train(["--resume", str(tmp_path), "--epochs", "2"])
    _, _, meta = weights(tmp_path)
    assert meta["train"]["epoch"] == 2
    assert meta["train"]["args"]["devices"] == "cpu:0,cpu:1"


def test_a_new_run_never_overwrites_an_old_one(data_dir, tmp_path, capsys):
    """A second run given the folder of a first (without --resume) is refused before it writes:
    it would empty metrics.jsonl and replace the first run's checkpoints."""
    run(data_dir, tmp_path, "--epochs", "1")
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    assert "checkpoint-last.safetensors" in before and before["metrics.jsonl"]
    err = _exit(train.main, ["--data", str(data_dir), "--run-dir", str(tmp_path)] + TINY, capsys)
    assert f"--run-dir {tmp_path} already holds a run" in err and f"--resume {tmp_path}" in err, err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == before
    # an empty folder (made beforehand, say) is fine
    (tmp_path / "fresh").mkdir()
    run(data_dir, tmp_path / "fresh", "--epochs", "1")
    assert train.checkpoint_path(tmp_path / "fresh").exists()
    # metrics without a checkpoint (older code killed in a first save): --resume and a new run both
    # refused it, each sending the user to the other; now both say how to take the folder again
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "metrics.jsonl").write_text(before["metrics.jsonl"].decode())
    for argv in (["--resume", str(tmp_path / "kept")], ["--data", str(data_dir), "--run-dir", str(tmp_path / "kept")]):
        err = _exit(train.main, argv, capsys)
        assert "no checkpoint to continue from" in err and f"remove {tmp_path / 'kept' / 'metrics.jsonl'}" in err, err
    (tmp_path / "kept" / "metrics.jsonl").unlink()
    run(data_dir, tmp_path / "kept", "--epochs", "1")
    assert [r["epoch"] for r in metrics(tmp_path / "kept")] == [1]


@pytest.mark.parametrize("train_record", ["x", {"epoch": 1}, None])
def test_resume_from_a_checkpoint_with_a_damaged_train_record(data_dir, tmp_path, capsys, train_record):
    """The metadata's 'train' section is not covered by the weights' SHA-256: a hand-edited one
    is refused with the reason, not a traceback."""
    import json

    run(data_dir, tmp_path, "--epochs", "1")
    meta_file = train.checkpoint_path(tmp_path).with_suffix(".json")
    record = json.loads(meta_file.read_text())
    if train_record is None:
        del record["train"]
    else:
        record["train"] = train_record
    meta_file.write_text(json.dumps(record))
    err = _exit(train.main, ["--resume", str(tmp_path), "--epochs", "2"], capsys)
    assert "was not written by convnet-train" in err and "Traceback" not in err, err


@pytest.mark.parametrize("where, value, why", [
    (("epoch",), -5, "'epoch' is -5, not an integer >= 0"),  # trained six more epochs over the run
    (("step",), None, "'step' is None"),
    (("lr",), "0.01", "'lr' is '0.01'"),
    (("cuts",), "x", "'cuts' is 'x'"),
    (("epoch_stats",), "delete", "it has no 'epoch_stats'"),
    (("args", "batch_size"), "64", "args 'batch_size' is '64', which --batch-size cannot give"),
    (("args", "schedule"), "never", "args 'schedule' is 'never'"),
    (("args", "devices"), 3, "args 'devices' is 3"),
    (("args", "model"), {}, "args 'model' is {}"),
    (("args", "flip"), "delete", "args has no 'flip'"),
    (("scheduler", "milestones"), 2, "schedule's state in the checkpoint is damaged: .*milestones must be a list"),
])
def test_resume_from_a_checkpoint_with_a_damaged_value(data_dir, tmp_path, capsys, where, value, why):
    """Each value of the 'train' record: these came out as KeyErrors and TypeErrors from the loop,
    or trained on from a nonsense position. The run's checkpoint stays as it was."""
    import json

    run(data_dir, tmp_path, "--epochs", "1")
    meta_file = train.checkpoint_path(tmp_path).with_suffix(".json")
    record = json.loads(meta_file.read_text())
    o = record["train"]
    for k in where[:-1]:
        o = o[k]
    if value == "delete":
        del o[where[-1]]
    else:
        o[where[-1]] = value
    meta_file.write_text(json.dumps(record))
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    err = _exit(train.main, ["--resume", str(tmp_path), "--epochs", "2"], capsys)
    assert re.search(f"--resume: .*{why}", err) and "Traceback" not in err, err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == before


def test_training_without_a_validation_split(tmp_path, capsys):
    """What convnet.prepare makes of a folder-per-class tree without val/, and --num-val 0: training
    crashed on len(val_split.labels) after writing args.json, evaluating on ds.val.images. Now it
    trains (null validation fields, no "best" checkpoint), the plateau schedule, which needs
    validation errors, is refused before anything is written, and evaluate says what is missing."""
    data = tmp_path / "noval"
    builtin.generate(data, num_train=100, num_val=0, size=36, seed=0, workers=1)
    err = _exit(train.main, ["--data", str(data), "--run-dir", str(tmp_path / "p")] + _tiny(["plateau"]) + ["--schedule", "plateau"],
                capsys)
    assert "has no validation split" in err and "--schedule step" in err and "Traceback" not in err, err
    assert not (tmp_path / "p").exists()
    run(data, tmp_path / "r", "--epochs", "2", "--limit-val", "10", "--plots", "yes")
    records = metrics(tmp_path / "r")
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 2), (2, 4)]
    for r in records:
        assert math.isfinite(r["train_loss"]) and 0 <= r["train_top1"] <= r["train_top5"] <= 1
        assert r["val_loss"] is r["val_top1"] is r["val_top5"] is None
    _, _, meta = weights(tmp_path / "r")
    assert meta["train"]["step"] == 4 and meta["train"]["best_val_error"] is None
    assert not train.checkpoint_path(tmp_path / "r", "best").exists()
    assert _png_size(tmp_path / "r" / "learning_curves.png") == plots.CURVES_SIZE
    assert not (tmp_path / "r" / "predictions.png").exists()
    err = _exit(evaluate.main, [str(tmp_path / "r")], capsys)
    assert "has no validation split" in err and "Traceback" not in err, err
    # the pictures' own command draws such a run too (it computed 1 - None)
    (tmp_path / "r" / "learning_curves.png").unlink()
    plots.main([str(tmp_path / "r")])
    assert _png_size(tmp_path / "r" / "learning_curves.png") == plots.CURVES_SIZE
    assert not (tmp_path / "r" / "predictions.png").exists()


def test_a_full_disk_is_a_message_not_a_traceback(data_dir, tmp_path, monkeypatch, capsys):
    # an OSError from a save (disk full, no permission) came out as a traceback
    from convnet import checkpoint

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full)
    err = _exit(train.main, ["--data", str(data_dir), "--run-dir", str(tmp_path / "r")] + TINY, capsys)
    assert "could not write" in err and "No space left on device" in err and "Traceback" not in err, err
    assert f"--resume {tmp_path / 'r'}" in err


class Crash(BaseException):
    """A kill (SIGKILL, os._exit, power cut): nothing in train.py catches it."""


@pytest.mark.parametrize("epoch, which, when", [(2, "first", "before"), (2, "last", "after"),
                                                (1, "first", "before"), (1, "first", "after")])
def test_a_crash_around_the_epochs_saves(data_dir, run_a, tmp_path, monkeypatch, capsys, epoch, which, when):
    """The epoch's metrics line was appended before its checkpoint was saved: a run killed between
    the two recorded that epoch twice after --resume (the curve stepped back), and one killed in
    epoch 1's first save could neither be resumed (no checkpoint) nor started again (metrics.jsonl
    held). Now the checkpoint goes first, "best" before "last", and --resume rewrites the lines to
    the checkpoint's epochs. Whatever the crash point, the finished run is the uninterrupted one."""
    save, saved = train.save, set()

    def crashing(run_dir, net, opt, state, kind):  # state["epoch"]: the epoch just finished
        hit = state["epoch"] == epoch and (kind == which or (which == "first" and epoch not in saved))
        saved.add(state["epoch"])
        if hit and when == "before":
            raise Crash
        save(run_dir, net, opt, state, kind)
        if hit and when == "after":
            raise Crash

    monkeypatch.setattr(train, "save", crashing)
    with pytest.raises(Crash):
        run(data_dir, tmp_path, "--epochs", "3")
    monkeypatch.setattr(train, "save", save)
    if (epoch, when) == (1, "before"):  # no checkpoint: the folder takes the run again
        err = _exit(train.main, ["--resume", str(tmp_path)], capsys)
        assert "holds no checkpoint" in err and f"start it again with --run-dir {tmp_path}" in err, err
        run(data_dir, tmp_path, "--epochs", "3")
    else:
        train.train(["--resume", str(tmp_path), "--epochs", "3"])
    keys = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5")
    assert [[r[k] for k in keys] for r in metrics(tmp_path)] == [[r[k] for k in keys] for r in metrics(run_a)]
    for which_ckpt in ("last", "best"):
        got, _, got_meta = weights(tmp_path, which_ckpt)
        want, _, want_meta = weights(run_a, which_ckpt)
        assert got_meta["train"]["epoch"] == want_meta["train"]["epoch"], which_ckpt
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{which_ckpt} {k}")


def test_resume_drops_metrics_lines_past_its_checkpoint(data_dir, tmp_path):
    """A line cut short by a kill, and a line of an epoch the checkpoint has not reached (a run of
    older code killed between its line and its save): both gone, the epoch recorded once."""
    run(data_dir, tmp_path, "--epochs", "1")
    line = (tmp_path / "metrics.jsonl").read_text()
    first = json.loads(line)
    (tmp_path / "metrics.jsonl").write_text(line + json.dumps({**first, "epoch": 2, "val_top1": 0.99}) + "\n"
                                            + line[:40])
    train.train(["--resume", str(tmp_path), "--epochs", "2"])
    records = metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first and records[1]["val_top1"] != 0.99


def test_resume_finds_the_data_by_any_path(data_dir, tmp_path, monkeypatch, capsys):
    """A relative --data was stored as given: --resume from another folder failed ('tiny does not
    exist'), and the same folder by its absolute path was refused as another dataset. Now the
    path is stored absolute, and --data on resume may name the run's dataset anywhere (checked by
    its fingerprint: classes, labels, first and last images), never another dataset."""
    monkeypatch.chdir(data_dir.parent)
    run(Path(data_dir.name), tmp_path / "r", "--epochs", "1")
    assert json.loads((tmp_path / "r" / "args.json").read_text())["data"] == str(data_dir.resolve())
    monkeypatch.chdir(tmp_path)
    train.train(["--resume", str(tmp_path / "r"), "--epochs", "2"])
    train.train(["--resume", str(tmp_path / "r"), "--epochs", "3", "--data", str(data_dir)])
    shutil.copytree(data_dir, tmp_path / "moved")
    train.train(["--resume", str(tmp_path / "r"), "--epochs", "4", "--data", "moved"])
    _, _, meta = weights(tmp_path / "r")
    assert meta["train"]["epoch"] == 4 and meta["train"]["args"]["data"] == str(tmp_path / "moved")
    other = tmp_path / "other"  # same sizes and classes, another seed
    builtin.generate(other, num_train=300, num_val=100, size=36, seed=1, workers=1)
    err = _exit(train.main, ["--resume", str(tmp_path / "r"), "--epochs", "5", "--data", str(other)], capsys)
    assert f"{other} is not the dataset this run trained on" in err, err
    # a checkpoint of older code, without a fingerprint: only the run's own folder is taken
    meta_file = train.checkpoint_path(tmp_path / "r").with_suffix(".json")
    record = json.loads(meta_file.read_text())
    del record["train"]["data_fingerprint"]
    meta_file.write_text(json.dumps(record))
    err = _exit(train.main, ["--resume", str(tmp_path / "r"), "--epochs", "5", "--data", str(data_dir)], capsys)
    assert f"--data {data_dir} is not the run's data folder {tmp_path / 'moved'}" in err, err
    train.train(["--resume", str(tmp_path / "r"), "--epochs", "5", "--data", "moved"])
    labels = np.load(tmp_path / "moved" / "val-labels.npy")  # the run's own folder, one label changed
    labels[7] = (labels[7] + 1) % 10
    np.save(tmp_path / "moved" / "val-labels.npy", labels)
    err = _exit(train.main, ["--resume", str(tmp_path / "r"), "--epochs", "6"], capsys)
    assert "is not the dataset this run trained on" in err, err


def test_resume_removes_the_temporaries_of_killed_saves(data_dir, tmp_path):
    """A kill inside a save left .checkpoint-last.safetensors.pending.tmpPID, a full copy of the
    weights and momentum, for good: no later save has that pid. Opening the run removes those of
    dead processes, not a live one's."""
    run(data_dir, tmp_path, "--epochs", "1")
    dead = tmp_path / f"..checkpoint-last.safetensors.pending.tmp{dead_pid()}"
    dead.write_bytes(train.checkpoint_path(tmp_path).read_bytes())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".checkpoint-last.json.tmp{live.pid}"
        busy.write_text("{")
        train.train(["--resume", str(tmp_path), "--epochs", "2"])
        assert not dead.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()
    _, _, meta = weights(tmp_path)
    assert meta["train"]["epoch"] == 2


@pytest.mark.parametrize("first_at", [8, 5])
def test_a_second_ctrl_c_while_saving_exits_cleanly(data_dir, run_a, tmp_path, monkeypatch, capsys, first_at):
    """Ctrl-C saves a checkpoint; a second one during that save came out as a KeyboardInterrupt
    traceback. Now: exit code 130, a line saying what the folder holds, and checkpoints that load
    (a save is all or nothing) and continue to the run that never stopped. At step 8 (mid-epoch 2)
    the second Ctrl-C lands in the save the first asked for; at step 5, epoch 1's last, the first
    waits for the epoch's end and the second lands in its "best" save: saving "last" then would
    leave "best" without epoch 1 for good."""
    if first_at == 8:
        run(data_dir, tmp_path, "--epochs", "1")
        argv = ["--resume", str(tmp_path), "--epochs", "3"]
    else:
        argv = ["--data", str(data_dir), "--run-dir", str(tmp_path), "--epochs", "3"] + TINY
    replace, pressed = os.replace, []

    def ctrl_c(net, step):
        if step == first_at:
            pressed.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    def replace_twice_pressed(src, dst):  # the second Ctrl-C lands inside a save
        if pressed == [1]:
            pressed.append(2)
            os.kill(os.getpid(), signal.SIGINT)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_twice_pressed)
    monkeypatch.setattr(train, "train", functools.partial(train.train, step_hook=ctrl_c))  # main() calls it
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert e.value.code == 130 and pressed == [1, 2]
    assert "interrupted again while saving" in out and "Traceback" not in out + err, (out, err)
    if first_at == 8:
        _, _, meta = weights(tmp_path)
        assert (meta["train"]["epoch"], meta["train"]["batch"], meta["train"]["step"]) == (1, 0, 6)
        train.train(["--resume", str(tmp_path), "--epochs", "3"])
    else:  # epoch 1's saves were stopped: no checkpoint yet, and the folder takes the run again
        assert "holds no checkpoint" in _exit(train.main, ["--resume", str(tmp_path)], capsys)
        run(data_dir, tmp_path, "--epochs", "3")
    for which in ("last", "best"):
        got, _, _ = weights(tmp_path, which)
        want, _, _ = weights(run_a, which)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{which} {k}")
    # and a Ctrl-C outside the training steps (here: while the data opens)
    monkeypatch.setattr(train, "open_data", lambda args: os.kill(os.getpid(), signal.SIGINT))
    err = _exit(train.main, ["--resume", str(tmp_path), "--epochs", "4"], capsys)
    assert "interrupted" in err and "Traceback" not in err, err


_SIGTERM_RUN = """
import functools, os, signal, sys
from convnet import checkpoint, train
run_dir, twice = sys.argv[1], sys.argv[2] == "twice"

def hook(net, step):
    if step == 8:
        os.kill(os.getpid(), signal.SIGTERM)

if twice:  # the second SIGTERM inside the save that the first one asked for
    write = checkpoint._files.atomic_write
    def atomic_write(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return write(*a, **kw)
    checkpoint._files.atomic_write = atomic_write
train.train = functools.partial(train.train, step_hook=hook)
train.main(["--resume", run_dir, "--epochs", "3"])
"""


@pytest.mark.parametrize("twice", [False, True])
def test_sigterm_saves_like_ctrl_c(data_dir, run_a, tmp_path, twice):
    """A SIGTERM (`kill`, or a cluster's scheduler before it stops a job) ended the run where it
    stood: the epoch so far was lost. It is now held until the step is complete, the checkpoint of
    that step is written, and the run exits with 143; a second SIGTERM while that is saved stops the
    save and leaves the checkpoint before it. Either way --resume ends where the run that never
    stopped ends. (In a child process: without the handler a SIGTERM would end pytest.)"""
    run(data_dir, tmp_path, "--epochs", "1")
    p = subprocess.run([sys.executable, "-c", _SIGTERM_RUN, str(tmp_path), "twice" if twice else "once"],
                       capture_output=True, text=True, cwd=Path(train.__file__).parent.parent, timeout=300)
    assert p.returncode == 143, (p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    _, _, meta = weights(tmp_path)
    where = (meta["train"]["epoch"], meta["train"]["batch"], meta["train"]["step"])
    if twice:
        assert "stopped by SIGTERM again while saving" in p.stdout, p.stdout
        assert where == (1, 0, 6)  # the epoch-1 checkpoint
    else:
        # sent before step 8, held until it is complete
        assert "stopped by SIGTERM: saved" in p.stdout and "at epoch 2, batch 3" in p.stdout, p.stdout
        assert where == (1, 3, 9)
    train.train(["--resume", str(tmp_path), "--epochs", "3"])
    got, _, _ = weights(tmp_path)
    want, _, _ = weights(run_a)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_a_second_signal_at_a_cut_records_the_cut_once(data_dir, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C at an epoch's end, after the learning rate was cut but before the epoch's
    checkpoint, saved the epoch in progress with the cut already in its 'cuts': the resumed run
    cut again, recording [1, 1] where the run that never stopped records [1]."""
    flags = ["--epochs", "2", "--milestones", "1"]
    run(data_dir, tmp_path / "whole", *flags)

    def first(net, step):
        if step == 5:  # the epoch's last step: held until it is complete
            os.kill(os.getpid(), signal.SIGINT)

    def printed(*a, **kw):
        print(*a, **kw)
        if a and str(a[0]).startswith("learning rate"):  # just after the cut
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "print", printed, raising=False)
    with pytest.raises(train.TrainingError) as e:
        run(data_dir, tmp_path / "r", *flags, hook=first)
    monkeypatch.undo()
    assert e.value.code == 130
    train.train(["--resume", str(tmp_path / "r")])
    assert weights(tmp_path / "r")[2]["train"]["cuts"] == weights(tmp_path / "whole")[2]["train"]["cuts"] == [1]
    for k, w in weights(tmp_path / "whole")[0].items():
        np.testing.assert_array_equal(weights(tmp_path / "r")[0][k], w, err_msg=k)


def test_a_second_signal_while_the_batches_stop(data_dir, tmp_path, monkeypatch):
    """The loader's batches were closed when collected, after the first Ctrl-C: a second one while
    their threads stopped was printed as "Exception ignored in: <generator object Loader.__iter__>"
    and lost. Now they are closed in the loop, and the second signal stops the run there."""
    from convnet.data import loader

    unraisable, sent = [], []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_type))
    shutdown = loader.ThreadPoolExecutor.shutdown

    def second(self, *a, **kw):
        if sent == [1]:
            sent.append(2)
            os.kill(os.getpid(), signal.SIGINT)
        return shutdown(self, *a, **kw)

    def first(net, step):
        if step == 2:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loader.ThreadPoolExecutor, "shutdown", second)
    with pytest.raises(train.TrainingError) as e:
        run(data_dir, tmp_path / "r", "--epochs", "1", hook=first)
    monkeypatch.undo()
    assert e.value.code == 130 and sent == [1, 2] and unraisable == []
    assert weights(tmp_path / "r")[2]["train"]["step"] == 3  # saved after the step the first signal waited for


def test_a_signal_at_the_end_of_the_last_epoch_is_not_lost(data_dir, tmp_path, monkeypatch, capsys):
    """A Ctrl-C or SIGTERM during the last epoch's end (its validation, its saves) was absorbed:
    the run said "done" and exited 0, and skipped the pictures without a word."""
    def at_last_validation(net, split, batch_size, common, real=train.evaluate_split):
        os.kill(os.getpid(), signal.SIGINT)
        return real(net, split, batch_size, common)

    monkeypatch.setattr(train, "evaluate_split", at_last_validation)
    monkeypatch.setattr(train, "train", functools.partial(train.train, step_hook=None))
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(data_dir), "--run-dir", str(tmp_path / "r"), "--epochs", "1"] + TINY
                   + ["--plots", "yes"])
    out = capsys.readouterr().out
    assert e.value.code == 130
    assert "interrupted at the end of the last epoch: the run is complete" in out, out
    assert f"pictures not drawn: python -m convnet.plots {tmp_path / 'r'}" in out, out
    assert weights(tmp_path / "r")[2]["train"]["epoch"] == 1  # the epoch's checkpoints were written


def _refused(argv, capsys):
    """convnet-train's stderr for argv, which must exit with 2 (a user error) and no traceback."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    return err


def _files(folder):
    return {f.name: f.read_bytes() for f in Path(folder).iterdir() if f.is_file()}


def test_one_run_at_a_time_in_a_run_folder(data_dir, tmp_path, capsys):
    """Two new runs started together into one --run-dir both trained (metrics.jsonl got every
    epoch twice), and --resume RUN while RUN trained wrote its checkpoints and metrics too. A run
    holds RUN/.lock while it trains: the others are refused, naming its pid, and write nothing."""
    r = tmp_path / "r"
    refused = []

    def meanwhile(net, step):
        if step in (2, 8):  # step 2: no checkpoint yet, the new run's check passes; step 8: epoch 2
            argv = (["--data", str(data_dir), "--run-dir", str(r), "--epochs", "1"] + TINY if step == 2
                    else ["--resume", str(r), "--epochs", "3"])
            before = _files(r)
            refused.append(_refused(argv, capsys))
            assert _files(r) == before

    run(data_dir, r, "--epochs", "2", hook=meanwhile)
    assert len(refused) == 2
    assert f"convnet-train: --run-dir {r} is in use by another convnet-train (pid {os.getpid()})" in refused[0]
    assert f"convnet-train: --resume {r} is in use by another convnet-train (pid {os.getpid()})" in refused[1]
    assert [m["epoch"] for m in metrics(r)] == [1, 2]

    # released when the run ends, and on Ctrl-C (the caller keeps the traceback, and so the frame)
    def ctrl_c(net, step):
        if step == 14:
            raise KeyboardInterrupt

    with pytest.raises(train.TrainingError) as e:
        train.train(["--resume", str(r), "--epochs", "3"], step_hook=ctrl_c)
    assert e.value.code == 130
    train.train(["--resume", str(r), "--epochs", "3"])
    assert [m["epoch"] for m in metrics(r)] == [1, 2, 3]
    # another process holding it is named; its lock goes when it dies
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path\n"
                               "from convnet import train; f = train._lock_run_dir(Path(sys.argv[1]), '')\n"
                               "print('held', flush=True); time.sleep(60)", str(r)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(train.__file__).parent.parent)
    try:
        assert holder.stdout.readline() == "held\n"
        err = _refused(["--resume", str(r), "--epochs", "4"], capsys)
        assert f"--resume {r} is in use by another convnet-train (pid {holder.pid})" in err, err
    finally:
        holder.kill()
        holder.wait()
    train.train(["--resume", str(r), "--epochs", "4"])
    assert [m["epoch"] for m in metrics(r)] == [1, 2, 3, 4]


def test_two_new_runs_that_pass_the_check_together(data_dir, tmp_path, monkeypatch, capsys):
    """Both found the folder free; the first took it: the second, checking again under the lock,
    is refused instead of emptying the first one's metrics and replacing its checkpoints."""
    open_data = train.open_data

    def another_run_meanwhile(args):
        monkeypatch.setattr(train, "open_data", open_data)
        run(data_dir, tmp_path, "--epochs", "1")
        return open_data(args)

    monkeypatch.setattr(train, "open_data", another_run_meanwhile)
    err = _refused(["--data", str(data_dir), "--run-dir", str(tmp_path), "--epochs", "1", "--seed", "1"] + TINY,
                   capsys)
    assert f"--run-dir {tmp_path} already holds a run" in err, err
    assert [m["epoch"] for m in metrics(tmp_path)] == [1]
    assert json.loads((tmp_path / "args.json").read_text())["seed"] == 0


def test_a_resume_started_while_its_run_saved(data_dir, tmp_path, monkeypatch, capsys):
    """A run that saved (and ended) after this resume loaded its checkpoint: training on from the
    older checkpoint would drop the other's epoch. Refused under the lock."""
    run(data_dir, tmp_path, "--epochs", "1")
    open_data = train.open_data

    def another_resume_meanwhile(args):
        monkeypatch.setattr(train, "open_data", open_data)
        train.train(["--resume", str(tmp_path), "--epochs", "2"])
        return open_data(args)

    monkeypatch.setattr(train, "open_data", another_resume_meanwhile)
    err = _refused(["--resume", str(tmp_path), "--epochs", "3"], capsys)
    assert f"--resume: {tmp_path} changed while this run was starting" in err, err
    _, _, meta = weights(tmp_path)
    assert meta["train"]["epoch"] == 2 and [m["epoch"] for m in metrics(tmp_path)] == [1, 2]


def test_a_run_dir_that_cannot_be_a_folder(data_dir, tmp_path, capsys):
    """An existing file, a folder under a file, a place that takes no folder: tracebacks
    (FileExistsError, NotADirectoryError, FileNotFoundError); now --run-dir errors, nothing written."""
    (tmp_path / "file").write_text("mine")
    for run_dir, why in [(tmp_path / "file", "a file of that name exists"),
                         (tmp_path / "file" / "r", "Not a directory"),
                         (Path("/proc/nope"), "No such file or directory")]:
        err = _refused(["--data", str(data_dir), "--run-dir", str(run_dir), "--epochs", "1"] + TINY, capsys)
        assert f"convnet-train: --run-dir {run_dir}: cannot create the folder ({why})" in err, err
    assert _files(tmp_path) == {"file": b"mine"} and os.listdir(tmp_path) == ["file"]


def test_empty_run_dir_or_resume_and_resume_into_another_folder(data_dir, tmp_path, monkeypatch, capsys):
    """--run-dir "" and --resume "" were taken as not given (a new run into runs/small-<time>);
    --resume RUN --run-dir OTHER trained into RUN and never made OTHER: each refused, naming its flag."""
    monkeypatch.chdir(tmp_path)
    for flags, message in [(["--run-dir", ""], "convnet-train: --run-dir: the name is empty"),
                           (["--resume", ""], "convnet-train: --resume: the name is empty")]:
        err = _refused(["--data", str(data_dir), "--epochs", "1"] + TINY + flags, capsys)
        assert message in err, err
    assert os.listdir(tmp_path) == []
    run(data_dir, "r", "--epochs", "1")
    before = _files("r")
    err = _refused(["--resume", "r", "--epochs", "2", "--run-dir", "other"], capsys)
    assert "convnet-train: --run-dir other is not the folder of the run to resume (r)" in err, err
    assert not (tmp_path / "other").exists() and _files("r") == before
    train.train(["--resume", "r", "--epochs", "2", "--run-dir", str(tmp_path / "r")])  # its own folder: fine
    assert [m["epoch"] for m in metrics("r")] == [1, 2]


def test_resume_with_nothing_left_to_train_says_so(data_dir, tmp_path, capsys):
    """--resume RUN --epochs N, N at or below the epochs done, printed the recipe and "done" and
    trained nothing, unsaid."""
    run(data_dir, tmp_path, "--epochs", "2")
    before = _files(tmp_path)
    capsys.readouterr()
    for flags in (["--epochs", "2"], ["--epochs", "1"], []):
        train.main(["--resume", str(tmp_path)] + flags)
        out = capsys.readouterr().out
        assert f"{tmp_path} has already trained 2 epochs: nothing to do (raise --epochs to train more)" in out, out
        assert "recipe:" not in out
    assert _files(tmp_path) == before


def test_resume_where_the_runs_devices_are_not_usable(data_dir, tmp_path, capsys):
    """A run from a GPU machine resumed without --devices where its devices are not usable: the
    error blamed --devices, which the user never gave."""
    run(data_dir, tmp_path, "--epochs", "1")
    meta_file = train.checkpoint_path(tmp_path).with_suffix(".json")
    record = json.loads(meta_file.read_text())
    record["train"]["args"]["devices"] = "cuda:98,cuda:99"  # no machine here has them
    meta_file.write_text(json.dumps(record))
    before = _files(tmp_path)
    err = _refused(["--resume", str(tmp_path), "--epochs", "2"], capsys)
    assert "convnet-train: --resume: the run's devices cuda:98,cuda:99 are not usable here (" in err, err
    assert "continue it with --devices cpu" in err and "convnet-train: --devices" not in err, err
    assert _files(tmp_path) == before
    err = _refused(["--resume", str(tmp_path), "--epochs", "2", "--devices", "cuda:98"], capsys)
    assert "convnet-train: --devices: " in err, err  # given: blamed
    train.train(["--resume", str(tmp_path), "--epochs", "2", "--devices", "cpu"])
    assert [m["epoch"] for m in metrics(tmp_path)] == [1, 2]


def test_a_run_dir_in_the_data_folder_is_refused(data_dir, tmp_path, monkeypatch, capsys):
    """Checkpoints went into the dataset's folder (the built-in dataset then refused to regenerate it)."""
    shutil.copytree(data_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in (tmp_path / "data").rglob("*"))
    for run_dir, where in [("data", "the"), ("data/./runs/a", "inside the")]:
        err = _refused(["--data", "data", "--run-dir", run_dir, "--epochs", "1"] + TINY, capsys)
        assert f"convnet-train: --run-dir {Path(run_dir)} is {where} --data folder {tmp_path / 'data'}: " in err, err
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == before
