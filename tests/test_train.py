"""The training and evaluation commands: a short run on a tiny built-in dataset learns; resuming
equals never stopping; a NaN stops the run naming step and layer; an ensemble is the average of
softmax outputs; the pictures are PNGs of the documented size; bad input gives clear errors."""
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest

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


def run(data_dir, run_dir, *extra, hook=None):
    return train.train(["--data", str(data_dir), "--run-dir", str(run_dir)] + TINY + list(extra), step_hook=hook)


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
    train.train(["--resume", str(tmp_path), "--epochs", "3"])
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
    for flags, message in [(["--batch-size", "0"], "--batch-size must be >= 1"),
                           (["--limit", "-30"], "--limit must be >= 1"), (["--limit", "0"], "--limit must be >= 1")]:
        err = _exit(evaluate.main, [str(run_a), "--data", str(data_dir)] + flags, capsys)
        assert message in err and "Traceback" not in err, err
    err = _exit(train.main, ["--resume", str(tmp_path / "nowhere")], capsys)
    assert "--resume" in err
    # tracebacks: a net's crop larger than the data's images; --json into a missing folder, after the table
    small = tmp_path / "small"
    builtin.generate(small, num_train=20, num_val=20, size=24, seed=0, workers=1)
    err = _exit(evaluate.main, [str(run_a), "--data", str(small)], capsys)
    assert "takes 32x32 crops, larger than the 24x24 images" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run_a), "--data", str(data_dir), "--json", str(tmp_path / "missing" / "e.json")])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "--json" in err and "does not exist" in err and out == "", (out, err)


@pytest.mark.parametrize("flags, message", [
    # tracebacks once the run folder was written (Loader, SGD's first step, the schedule)
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be finite and >= 0"),
    (["--momentum", "inf"], "--momentum must be finite"),
    (["--milestones", "a,b"], "--milestones must be comma-separated epochs"),
    (["--lr-factor", "2", "--schedule", "plateau"], "--lr-factor must be in"),
    (["--lighting", "-1"], "--lighting must be finite and >= 0"),
    # silently wrong: no training, every image but the last 100, the rate -0.01 after epoch 2,
    # no lighting, epochs of no step reporting a training loss of 0.0000
    (["--epochs", "-1"], "--epochs must be >= 1"),
    (["--limit-train", "-100"], "--limit-train must be >= 1"),
    (["--lr-factor", "-1"], "--lr-factor must be in"),
    (["--lighting", "nan"], "--lighting must be finite and >= 0"),
    (["--limit-train", "20", "--batch-size", "50"], "20 training images make no full batch of 50"),
])
def test_bad_numbers_stop_before_anything_is_written(data_dir, tmp_path, capsys, flags, message):
    err = _exit(train.main, ["--data", str(data_dir), "--run-dir", str(tmp_path / "r")] + TINY + flags, capsys)
    assert message in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


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
