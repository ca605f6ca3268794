"""Data pipeline: prepare (ImageNet-style trees with messy files, resume, bad input), the
shard format, the built-in dataset, CIFAR-10 reading, and the Loader (determinism, resume,
augmentation against the NumPy reference, every device)."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import convnet
from conftest import dead_pid
from convnet.data import Loader, builtin, open_dataset, shards
from convnet.data.prepare import PrepareError, load_image, prepare
from test_augment import ref_augment

SIZE = 32


# ---- a small ImageNet-style tree with messy files ----

def _jpeg(path, array, mode="RGB", **kw):
    Image.fromarray(array).convert(mode).save(path, "JPEG", quality=95, **kw)


def _smooth(rng, h, w):
    """A smooth random colour image (JPEG keeps it close to the original)."""
    small = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def make_tree(root, rng, flat_val=True):
    train = root / "train"
    for c in ("n001", "n002", "n003"):
        (train / c).mkdir(parents=True)
    # n001: plain JPEGs of several aspect ratios, and a grayscale JPEG.
    _jpeg(train / "n001" / "a.JPEG", _smooth(rng, 60, 90))
    _jpeg(train / "n001" / "b.JPEG", _smooth(rng, 100, 40))
    _jpeg(train / "n001" / "gray.JPEG", _smooth(rng, 50, 50), mode="L")
    # n002: a CMYK JPEG, a PNG named .JPEG, a truncated JPEG, a landscape image whose central
    # square is red and whose sides are blue (checks the shorter-side scale + central crop).
    _jpeg(train / "n002" / "cmyk.JPEG", _smooth(rng, 48, 64), mode="CMYK")
    Image.fromarray(_smooth(rng, 40, 40)).save(train / "n002" / "png_named.JPEG", "PNG")
    _jpeg(train / "n002" / "truncated.JPEG", _smooth(rng, 80, 80))
    data = (train / "n002" / "truncated.JPEG").read_bytes()
    (train / "n002" / "truncated.JPEG").write_bytes(data[:len(data) // 2])
    centre = np.zeros((64, 128, 3), np.uint8)
    centre[..., 2] = 255
    centre[:, 32:96] = [255, 0, 0]
    Image.fromarray(centre).save(train / "n002" / "centre.png")
    (train / "n002" / "notes.txt").write_text("not an image")
    # n003: PNGs, one with alpha, one palette, in a subfolder.
    (train / "n003" / "sub").mkdir()
    Image.fromarray(_smooth(rng, 33, 47)).convert("RGBA").save(train / "n003" / "rgba.png")
    Image.fromarray(_smooth(rng, 36, 36)).convert("P").save(train / "n003" / "sub" / "pal.png")
    val = root / "val"
    val.mkdir()
    truth = [("v1.JPEG", "n003"), ("v2.JPEG", "n001"), ("v3.JPEG", "n002"), ("v4.JPEG", "n001")]
    for name, c in truth:
        if flat_val:
            _jpeg(val / name, _smooth(rng, 45, 70))
        else:
            (val / c).mkdir(exist_ok=True)
            _jpeg(val / c / name, _smooth(rng, 45, 70))
    if flat_val:
        (root / "val.csv").write_text("ImageId,PredictionString\n" +
                                      "".join(f"{n.split('.')[0]},{c} 1 2 3 4\n" for n, c in truth))
    return truth


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    make_tree(root, np.random.default_rng(5))
    return root


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    dst = tmp_path_factory.mktemp("prepared")
    prepare(tree, dst, size=SIZE, shard_size=3, workers=1, progress=False)
    return dst


def test_prepare_outputs(tree, prepared):
    ds = open_dataset(prepared)
    assert ds.classes == ["n001", "n002", "n003"] and ds.image_size == SIZE
    # 9 training image files, the truncated one skipped; 4 validation images.
    assert len(ds.train) == 8 and len(ds.val) == 4
    assert list(ds.train.labels) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert list(ds.val.labels) == [2, 0, 1, 0]
    assert ds.train.images.shape == (8, SIZE, SIZE, 3) and ds.train.images.dtype == np.uint8
    index = json.loads((prepared / "index.json").read_text())
    assert [s["count"] for s in index["splits"]["train"]["shards"]] == [3, 3, 2]  # the truncated file was in shard 2
    # The shards hold exactly what load_image makes of each file, in order.
    files = [f for i in range(3) for f in json.loads((prepared / f"train-{i:05d}.json").read_text())["files"]]
    assert files[3:5] == ["train/n002/centre.png", "train/n002/cmyk.JPEG"]
    for k, f in enumerate(files):
        np.testing.assert_array_equal(ds.train.images[k], load_image(tree / f, SIZE))
    # Shorter side to SIZE then the central square: the red centre fills the image.
    centre = ds.train.images[3].astype(int)
    assert (np.abs(centre[:, 2:-2] - [255, 0, 0]) < 8).all()
    # Grayscale decoded to equal channels; the report names the truncated file with a reason.
    gray = ds.train.images[2].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    report = (prepared / "prepare-report.txt").read_text()
    assert "train/n002/truncated.JPEG" in report and "truncated" in report.split("n002/truncated.JPEG")[1].lower()
    assert index["skipped"] == 1
    # Mean image and PCA of all training pixels, as documented.
    imgs = np.asarray(ds.train.images, np.float64)
    np.testing.assert_allclose(ds.mean, imgs.mean(0), rtol=1e-5, atol=1e-3)
    cov = np.cov(imgs.reshape(-1, 3).T / 255.0, bias=True)
    np.testing.assert_allclose(ds.pca_eigvec @ np.diag(ds.pca_eigval / 255.0) @ ds.pca_eigvec.T, cov, atol=1e-6)
    assert ds.pca_eigval[0] >= ds.pca_eigval[1] >= ds.pca_eigval[2] >= 0


def test_prepare_resume_gives_same_shards(tree, prepared, tmp_path):
    dst = tmp_path / "resumed"
    prepare(tree, dst, size=SIZE, shard_size=3, workers=1, progress=False, stop_after_shards=2)
    assert not (dst / "index.json").exists()  # interrupted: not a dataset yet
    with pytest.raises(ValueError, match="not a prepared dataset"):
        open_dataset(dst)
    first = (dst / "train-00000.npy").stat().st_mtime_ns
    (dst / ".train-00002.npy.tmp123.npy").write_bytes(b"half a shard")  # a write cut short
    prepare(tree, dst, size=SIZE, shard_size=3, workers=2, progress=False)
    assert (dst / "train-00000.npy").stat().st_mtime_ns == first  # finished shards are skipped
    assert not list(dst.glob(".*tmp*"))
    for f in sorted(os.listdir(prepared)):
        if f.endswith(".npy") or f == "index.json":
            assert (dst / f).read_bytes() == (prepared / f).read_bytes(), f
    # Another source into the same folder is refused.
    with pytest.raises(PrepareError, match="holds a preparation of other"):
        prepare(tree, dst, size=SIZE + 1, shard_size=3, workers=1, progress=False)


def test_prepare_val_class_folders_and_numbered_list(tmp_path):
    rng = np.random.default_rng(1)
    a = tmp_path / "a"
    truth = make_tree(a, rng, flat_val=False)
    ds = open_dataset(prepare(a, tmp_path / "pa", size=16, workers=1, progress=False))
    want = sorted(truth, key=lambda t: (t[1], t[0]))  # class folders, then names
    assert list(ds.val.labels) == [ds.classes.index(c) for _, c in want]
    b = tmp_path / "b"
    truth = make_tree(b, rng)
    (b / "val.csv").unlink()
    with pytest.raises(PrepareError, match="--val-labels"):
        prepare(b, tmp_path / "pb", size=16, workers=1, progress=False)
    gt = b / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{['n001', 'n002', 'n003'].index(c) + 1}\n" for _, c in truth))
    with pytest.raises(PrepareError, match="--synsets"):
        prepare(b, tmp_path / "pb", size=16, workers=1, progress=False)
    ds = open_dataset(prepare(b, tmp_path / "pb", size=16, workers=1, progress=False, synsets="sorted"))
    assert list(ds.val.labels) == [2, 0, 1, 0]
    syn = tmp_path / "synsets.txt"
    syn.write_text("n003 a\nn001 b\nn002 c\n")  # ids in another order
    gt.write_text("1\n2\n3\n2\n")
    ds = open_dataset(prepare(b, tmp_path / "pc", size=16, workers=1, progress=False, synsets=syn))
    assert list(ds.val.labels) == [2, 0, 1, 0]


def test_prepare_numbered_list_with_devkit_meta_mat(tmp_path):
    # The devkit's meta.mat beside the numbered list names the ids: a MATLAB struct array
    # 'synsets' with ILSVRC2012_ID and WNID (and more), leaves first, then inner nodes.
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    b = tmp_path / "b"
    truth = make_tree(b, rng)
    (b / "val.csv").unlink()
    gt = b / "ILSVRC2012_validation_ground_truth.txt"
    order = ["n002", "n003", "n001", "n999"]  # ids 1..4; n999 an inner node, not a training class
    synsets = np.zeros((len(order), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                               ("num_children", "O")])
    for i, w in enumerate(order):
        synsets[i, 0] = (np.array([[i + 1]], np.uint16), w, f"class {w}", np.array([[3 if i == 3 else 0]]))
    sio.savemat(gt.with_name("meta.mat"), {"synsets": synsets})
    gt.write_text("".join(f"{order.index(c) + 1}\n" for _, c in truth))
    ds = open_dataset(prepare(b, tmp_path / "out", size=16, workers=1, progress=False))
    assert list(ds.val.labels) == [ds.classes.index(c) for _, c in truth]
    gt.write_text("4\n" * len(truth))  # an id that is not a training class
    with pytest.raises(PrepareError, match="class id 4 is not a training class"):
        prepare(b, tmp_path / "out2", size=16, workers=1, progress=False)


def test_prepare_folder_tree_without_splits(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("cat", "dog"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(2):
            _jpeg(tmp_path / "src" / c / f"{i}.jpg", _smooth(rng, 30, 40))
    ds = open_dataset(prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1, progress=False))
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 4 and ds.val is None


def test_prepare_bad_input(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(PrepareError, match="no such folder"):
        prepare(tmp_path / "missing", tmp_path / "out", progress=False)
    src = tmp_path / "src"
    make_tree(src, rng)
    (src / "train" / "n004").mkdir()
    with pytest.raises(PrepareError, match="class folder .*n004 is empty"):
        prepare(src, tmp_path / "out", progress=False)
    (src / "train" / "n004").rmdir()
    csv = (src / "val.csv").read_text()
    (src / "val.csv").write_text(csv + "v9,n001\n")  # a label without an image
    with pytest.raises(PrepareError, match="does not match the validation images"):
        prepare(src, tmp_path / "out", progress=False)
    (src / "val.csv").write_text(csv.replace("v2,", "v7,"))  # an image without a label
    with pytest.raises(PrepareError, match="1 images without a label"):
        prepare(src, tmp_path / "out", progress=False)
    (src / "val.csv").write_text(csv.replace("n003", "n999"))
    with pytest.raises(PrepareError, match="not a training class"):
        prepare(src, tmp_path / "out", progress=False)
    (src / "val.csv").unlink()
    (src / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n")  # 3 labels, 4 images
    with pytest.raises(PrepareError, match="has 3 labels but the validation folder has 4 images"):
        prepare(src, tmp_path / "out", progress=False, synsets="sorted")


def test_prepare_cli(tree, tmp_path, capsys):
    from convnet.prepare import main
    assert main([str(tree), str(tmp_path / "o"), "--size", "16", "--quiet", "--workers", "1"]) == 0
    assert "1 files skipped" in capsys.readouterr().out
    assert main([str(tmp_path / "nope"), str(tmp_path / "o2"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err


def _run_python(code, *args, timeout=120):
    """Run code in a fresh Python importing this convnet; on timeout kill its whole process group
    (a hung prepare leaves pool workers behind) and fail."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"timed out after {timeout} s (hung)")
    return proc.returncode, out, err


# The decoding of die.png kills its worker process, as the out-of-memory killer would, once
# shard 0 is finished (so there is a finished shard to keep).
_DYING_WORKER = r"""
import os, sys, time
from pathlib import Path
import convnet.data.prepare as p
real = p.load_image
def load_image(path, size):
    if Path(path).name == "die.png":
        while not (Path(sys.argv[2]) / "train-00000.json").exists():
            time.sleep(0.01)
        os._exit(1)
    return real(path, size)
p.load_image = load_image
sys.exit(p.main(sys.argv[1:]))
"""


def test_prepare_worker_dies(tmp_path):
    # multiprocessing.Pool waited forever for the lost shard
    rng = np.random.default_rng(6)
    for name in ("a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/die.png"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth(rng, 20, 30)).save(tmp_path / "src" / name)
    dst = tmp_path / "out"
    args = ["--size", "16", "--shard-size", "2", "--workers", "2", "--quiet"]
    rc, out, err = _run_python(_DYING_WORKER, tmp_path / "src", dst, *args)
    assert rc == 2 and "Traceback" not in err, err
    assert "a worker process died" in err and "rerun the same command to resume" in err, err
    assert not (dst / "index.json").exists() and (dst / "train-00000.json").exists()
    stamp = (dst / "train-00000.npy").stat().st_mtime_ns
    # The rerun finishes the job and keeps the finished shard; the result is an uninterrupted run's.
    prepare(tmp_path / "src", dst, size=16, shard_size=2, workers=2, progress=False)
    assert (dst / "train-00000.npy").stat().st_mtime_ns == stamp
    whole = prepare(tmp_path / "src", tmp_path / "whole", size=16, shard_size=2, workers=1, progress=False)
    for f in sorted(os.listdir(whole)):
        if f.endswith(".npy") or f == "index.json":
            assert (dst / f).read_bytes() == (whole / f).read_bytes(), f
    assert len(open_dataset(dst).train) == 6


def test_prepare_refuses_a_dataset_it_did_not_plan(tree, prepared, tmp_path):
    # were replaced without a word: index.json, shards, labels, mean.npy
    bi = builtin.generate(tmp_path / "bi", num_train=12, num_val=4, size=16, seed=0, num_classes=3, workers=1)
    before = {f.name: f.read_bytes() for f in bi.iterdir() if f.is_file()}
    with pytest.raises(PrepareError, match=r"already holds a dataset \(source: builtin\) that this command did not "
                                           r"prepare \(index.json, mean.npy, train-00000.npy, .*no prepare-plan.json"):
        prepare(tree, bi, size=16, workers=1, progress=False)
    assert {f.name: f.read_bytes() for f in bi.iterdir() if f.is_file()} == before
    # A preparation without its plan (made by hand, or by another version), even an unfinished one.
    old = tmp_path / "old"
    old.mkdir()
    (old / "train-00000.npy").write_bytes((prepared / "train-00000.npy").read_bytes())
    with pytest.raises(PrepareError, match=r"already holds dataset files that .* \(train-00000.npy; no prepare"):
        prepare(tree, old, size=SIZE, shard_size=3, workers=1, progress=False)
    # The same plan again is a resume: nothing is redone, the dataset is the same.
    stamps = {f.name: f.stat().st_mtime_ns for f in prepared.glob("train-0*.npy")}
    prepare(tree, prepared, size=SIZE, shard_size=3, workers=1, progress=False)
    assert {f.name: f.stat().st_mtime_ns for f in prepared.glob("train-0*.npy")} == stamps
    assert len(open_dataset(prepared).train) == 8
    # A folder of other files is fine.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    assert len(open_dataset(prepare(tree, tmp_path / "notes", size=16, workers=1, progress=False)).train) == 8


def test_prepare_high_bit_depths(tmp_path):
    # convert("RGB") clipped 16-bit values to 0..255 (a 0..65535 ramp came out 97% white) and
    # float ones too (0..1 all black), and the report said nothing was skipped
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    want = np.rint(ramp / 257.0)
    gray16 = Image.fromarray(np.tile(ramp, (64, 1)))
    assert gray16.mode == "I;16"
    gray16.save(tmp_path / "gray16.png")
    gray16.save(tmp_path / "gray16.tif")
    # a 16-bit PGM: Pillow reads it as mode "I" (as 16-bit PNGs before Pillow 10.4)
    (tmp_path / "gray16.ppm").write_bytes(b"P5 64 64 65535\n" + np.tile(ramp, (64, 1)).astype(">u2").tobytes())
    for name in ("gray16.png", "gray16.tif", "gray16.ppm"):
        a = load_image(tmp_path / name, 64).astype(int)
        assert (a == a[..., :1]).all(), name  # gray
        np.testing.assert_allclose(a[32, :, 0], want, atol=1, err_msg=name)
    # 48-bit RGB PNGs were already fine: keep them so
    rgb48 = np.zeros((16, 16, 3), np.uint16)
    rgb48[..., 0], rgb48[..., 2] = 65535, 32896
    with open(tmp_path / "rgb48.png", "wb") as f:  # Pillow does not write 48-bit PNGs: a minimal one
        import struct
        import zlib

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb48)
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert (load_image(tmp_path / "rgb48.png", 8) == [255, 0, 128]).all()
    # 32-bit float and integer images have no standard range: skipped, with the reason
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    gray16.save(src / "a16.png")
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)).save(src / "float.tif")
    Image.fromarray(np.arange(64 * 64, dtype=np.int32).reshape(64, 64)).save(src / "int32.tif")
    ds = open_dataset(prepare(tmp_path / "src", tmp_path / "out", size=64, workers=1, progress=False))
    assert len(ds.train) == 1 and ds.info["skipped"] == 2
    np.testing.assert_allclose(ds.train.images[0][32, :, 1], want, atol=1)
    report = (tmp_path / "out" / "prepare-report.txt").read_text()
    assert "c/float.tif\tValueError: float 32-bit samples (mode F) have no standard range" in report
    assert "c/int32.tif\tValueError: integer 32-bit samples (mode I) have no standard range" in report


def test_prepare_applies_exif_orientation(tmp_path):
    # was stored as the sensor saw it: a phone photo taken upright lay on its side
    img = np.zeros((48, 96, 3), np.uint8)  # as stored: left half red, right half blue
    img[:, :48] = [255, 0, 0]
    img[:, 48:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: to display, rotate 90 degrees clockwise
    Image.fromarray(img).save(tmp_path / "o6.jpg", quality=95, exif=exif)
    Image.fromarray(img).save(tmp_path / "o6.png", exif=exif)
    Image.fromarray(img).save(tmp_path / "o1.jpg", quality=95)
    for name in ("o6.jpg", "o6.png"):
        a = load_image(tmp_path / name, 16).astype(int)  # upright: 48 wide, 96 tall; red on top
        assert (np.abs(a[:6] - [255, 0, 0]) < 10).all() and (np.abs(a[-6:] - [0, 0, 255]) < 10).all(), name
    a = load_image(tmp_path / "o1.jpg", 16).astype(int)  # no tag: as stored
    assert (np.abs(a[:, :6] - [255, 0, 0]) < 10).all() and (np.abs(a[:, -6:] - [0, 0, 255]) < 10).all()


def test_prepare_no_readable_image_writes_the_report(tmp_path, capsys):
    # the error pointed at a report that was never written
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "src" / "c" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "src" / "c" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    from convnet.prepare import main
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--size", "16", "--quiet", "--workers", "1"]) == 2
    report = tmp_path / "out" / "prepare-report.txt"
    assert f"no image could be read (see {report})" in capsys.readouterr().err
    lines = report.read_text().splitlines()
    assert lines[0] == "# files skipped by convnet.prepare: 2"
    assert lines[2].startswith("train\tc/a.jpg\tUnidentifiedImageError: cannot identify image file")
    assert lines[3].startswith("train\tc/b.png\t")


def _class_folders(root, rng, names=("a", "b"), n=2):
    """A folder-per-class tree of n small JPEGs a class."""
    for c in names:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _jpeg(root / c / f"{i}.jpg", _smooth(rng, 20, 30))


def test_prepare_names_not_utf8_and_report_escapes(tmp_path):
    # b"caf\xe9.jpg" stopped the run with UnicodeEncodeError in the plan's digest (and the report
    # could not have been written); a tab or newline in a name broke the report's rows
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(7))
    cafe = os.fsdecode(b"caf\xe9.jpg")
    _jpeg(src / "a" / cafe, _smooth(np.random.default_rng(8), 20, 30))
    (src / "a" / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not a jpeg")
    (src / "b" / "tab\there\nnewline.jpg").write_bytes(b"not a jpeg")
    ds = open_dataset(prepare(src, tmp_path / "out", size=16, workers=1, progress=False))
    assert len(ds.train) == 5 and list(ds.train.labels) == [0, 0, 0, 1, 1]
    files = json.loads((tmp_path / "out" / "train-00000.json").read_text())["files"]
    assert files[:3] == ["a/0.jpg", "a/1.jpg", f"a/{cafe}"]  # 'bad' sorts first, and was skipped
    np.testing.assert_array_equal(ds.train.images[2], load_image(src / "a" / cafe, 16))
    lines = (tmp_path / "out" / "prepare-report.txt").read_text().splitlines()
    assert len(lines) == 4 and all(len(ln.split("\t")) == 3 for ln in lines[2:]), lines
    assert lines[2].startswith("train\ta/bad\\xff.jpg\tUnidentifiedImageError: ")
    assert lines[3].startswith("train\tb/tab\\there\\nnewline.jpg\tUnidentifiedImageError: ")
    # the same files again: a resume, the digest is the same
    prepare(src, tmp_path / "out", size=16, workers=1, progress=False)


_PREPARE_CLI = "import sys; from convnet.prepare import main; sys.exit(main(sys.argv[1:]))"


def test_prepare_skips_files_that_are_not_regular(tmp_path):
    # a FIFO named like an image: Image.open waited forever for a writer
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(9))
    os.mkfifo(src / "a" / "pipe.jpg")
    rc, out, err = _run_python(_PREPARE_CLI, src, tmp_path / "out", "--size", "16", "--workers", "1", "--quiet",
                               timeout=60)
    assert rc == 0, err
    assert "4 images of 16x16" in out and "1 files skipped" in out, out
    report = (tmp_path / "out" / "prepare-report.txt").read_text().splitlines()
    assert report[2] == "train\ta/pipe.jpg\tValueError: not a regular file"


def test_prepare_unreadable_folders(tmp_path, monkeypatch):
    # os.walk left out a folder it could not list without a word; an unreadable class folder was
    # "empty (no image files)". chmod does not stop root: the listing fails here instead.
    src = tmp_path / "src"
    make_tree(src, np.random.default_rng(10))
    blocked, real = set(), os.scandir

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    for folder in (src / "train" / "n003" / "sub", src / "train" / "n001"):
        blocked.add(str(folder))
        with pytest.raises(PrepareError, match=f"cannot read folder {folder}: Permission denied"):
            prepare(src, tmp_path / "out", size=16, workers=1, progress=False)
        blocked.clear()
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_class_with_no_readable_image(tmp_path):
    # was kept with no training image at all, and no word (an empty class folder is refused)
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(11), names=("a", "b", "c"))
    for f in ("0.jpg", "1.jpg"):
        (src / "b" / f).write_bytes(b"not a jpeg")
    report = tmp_path / "out" / "prepare-report.txt"
    with pytest.raises(PrepareError, match=f"no training image of class 'b' could be read \\(see {report}\\)"):
        prepare(src, tmp_path / "out", size=16, workers=1, progress=False)
    assert "train\tb/0.jpg\t" in report.read_text() and not (tmp_path / "out" / "index.json").exists()


def test_prepare_label_files_bad_input(tmp_path):
    src = tmp_path / "src"
    make_tree(src, np.random.default_rng(12))  # val.csv: v1 n003, v2 n001, v3 n002, v4 n001
    csv = (src / "val.csv").read_text()
    run = lambda **kw: prepare(src, tmp_path / "out", size=16, workers=1, progress=False, **kw)  # noqa: E731
    # macOS metadata in the flat validation folder was counted as an image ("1 images without a label")
    (src / "val" / "._v1.JPEG").write_bytes(b"\0\5\26\7")
    assert list(open_dataset(run()).val.labels) == [2, 0, 1, 0]
    # a row listed twice: the last one won, silently
    (src / "val.csv").write_text(csv + "v1,n001\n")
    with pytest.raises(PrepareError, match="val.csv lists 'v1' twice"):
        run()
    # class folders beside flat images were left out, silently
    (src / "val.csv").write_text(csv)
    (src / "val" / "n001").mkdir()
    _jpeg(src / "val" / "n001" / "v5.JPEG", _smooth(np.random.default_rng(0), 20, 30))
    with pytest.raises(PrepareError, match=r"val holds both images \(v1.JPEG, ...\) and folders \(n001\)"):
        run()
    (src / "val" / "n001" / "v5.JPEG").unlink()
    (src / "val" / "n001").rmdir()
    (src / "val.csv").unlink()
    # a numbered list with a byte-order mark, or a bad line, was read as a CSV ("class '' of '-1'")
    gt = src / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("\ufeff3\n1\n2\n1\n", encoding="utf-8")
    assert list(open_dataset(prepare(src, tmp_path / "bom", size=16, workers=1, progress=False,
                                     synsets="sorted")).val.labels) == [2, 0, 1, 0]
    gt.write_text("3\n-1\n2\n1\n")
    with pytest.raises(PrepareError, match=r"ground_truth.txt line 2: '-1' is not a class id"):
        run(synsets="sorted")
    gt.write_text("3\n1\n2\n1\n")
    # --synsets and --val-labels files that cannot be read were raw tracebacks; a wnid listed twice
    # shifted every later id by one, silently
    syn = tmp_path / "synsets.txt"
    (tmp_path / "folder").mkdir()
    syn.write_bytes(b"n001\n\xffn002\n")
    for path, why in [(tmp_path / "none", "cannot read --synsets file .*none: No such file"),
                      (tmp_path / "folder", "cannot read --synsets file .*folder: Is a directory"),
                      (syn, "--synsets file .*synsets.txt is not UTF-8 text")]:
        with pytest.raises(PrepareError, match=why):
            run(synsets=path)
        with pytest.raises(PrepareError, match=why.replace("--synsets", "ground-truth")):
            run(val_labels=path)
    syn.write_text("n001\nn002\nn001\nn003\n")
    with pytest.raises(PrepareError, match="synsets.txt lists 'n001' twice"):
        run(synsets=syn)
    # a damaged meta.mat, or one of other fields, beside the list: raw scipy errors, KeyError
    sio = pytest.importorskip("scipy.io")  # last: without scipy, the checks above still run
    meta = src / "meta.mat"
    meta.write_bytes(b"MATLAB 5.0 MAT-file, cut short")
    with pytest.raises(PrepareError, match=r"meta.mat is not the devkit's meta.mat \(.*\); pass --synsets FILE"):
        run()
    sio.savemat(meta, {"x": np.arange(3)})
    with pytest.raises(PrepareError, match=r"meta.mat is not the devkit's meta.mat \(KeyError: 'synsets'\)"):
        run()


def test_prepare_bad_output_folders(tmp_path):
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(13))
    kw = dict(size=16, shard_size=2, workers=1, progress=False)
    # an output folder that is a file, or cannot be made: raw FileExistsError, NotADirectoryError
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrepareError, match="the output folder .*file is not a folder"):
        prepare(src, tmp_path / "file", **kw)
    with pytest.raises(PrepareError, match="cannot create the output folder .*file/out: Not a directory"):
        prepare(src, tmp_path / "file" / "out", **kw)
    # DST inside the scanned SRC worked once, then its rerun read DST as a class folder
    with pytest.raises(PrepareError, match=f"the output folder {src / 'out'} is inside {src}, which is searched"):
        prepare(src, src / "out", **kw)
    assert not (src / "out").exists()
    # beside train/ and val/ it is not scanned: allowed, and resumed
    tree = tmp_path / "tree"
    make_tree(tree, np.random.default_rng(14))
    with pytest.raises(PrepareError, match="is inside .*train, which is searched"):
        prepare(tree, tree / "train" / "out", **kw)
    prepare(tree, tree / "out", **dict(kw, stop_after_shards=1))
    assert len(open_dataset(prepare(tree, tree / "out", **kw)).train) == 8
    # a damaged plan file: raw JSONDecodeError, AttributeError, UnicodeDecodeError
    dst = tmp_path / "dst"
    prepare(src, dst, **dict(kw, stop_after_shards=1))
    plan = (dst / "prepare-plan.json").read_bytes()
    for damage, why in [(b"", "Expecting value"), (b"[1]", "a JSON list, not an object"), (b"\xff", "utf-8")]:
        (dst / "prepare-plan.json").write_bytes(damage)
        with pytest.raises(PrepareError, match=f"prepare-plan.json is damaged \\(.*{why}.*\\): empty {dst}"):
            prepare(src, dst, **kw)
    (dst / "prepare-plan.json").write_bytes(plan)
    assert len(open_dataset(prepare(src, dst, **kw)).train) == 4


def test_prepare_checks_settings_before_writing(tmp_path, capsys):
    # --size 10000000: a MemoryError after prepare-plan.json had locked DST to it; 16.0 a bare
    # TypeError, also after; --workers -3 was taken
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(15))
    for kw, why in [(dict(size=10_000_000), "--size must be an integer from 8 to 4096, got 10000000"),
                    (dict(size=16.0), "--size must be an integer from 8 to 4096, got 16.0"),
                    (dict(size=4), "--size must be an integer from 8 to 4096, got 4"),
                    (dict(shard_size=0), "--shard-size must be an integer of at least 1, got 0"),
                    (dict(workers=-3), "--workers must be an integer of at least 1, got -3"),
                    (dict(workers=2.5), "--workers must be an integer of at least 1, got 2.5"),
                    (dict(size=4096, shard_size=10**6), "a shard of 1000000 images of 4096x4096 takes 46875.0 GiB, "
                                                        "more than half of this machine's memory")]:
        with pytest.raises(PrepareError, match=why):
            prepare(src, tmp_path / "out", **dict(dict(size=16, progress=False), **kw))
        assert not (tmp_path / "out").exists()
    from convnet.prepare import main
    assert main([str(src), str(tmp_path / "out"), "--workers", "-3", "--quiet"]) == 2
    assert "error: prepare: --workers must be an integer of at least 1, got -3" in capsys.readouterr().err
    # a rerun with other settings named size only, whatever differed
    prepare(src, tmp_path / "out", size=np.int64(16), shard_size=3, workers=1, progress=False)
    with pytest.raises(PrepareError, match=r"other files or settings \(--shard-size 3 there, 2 now; its source"):
        prepare(src, tmp_path / "out", size=16, shard_size=2, workers=1, progress=False)
    with pytest.raises(PrepareError, match=r"\(--size 16 there, 24 now; --shard-size 3 there, 2 now; its source"):
        prepare(src, tmp_path / "out", size=24, shard_size=2, workers=1, progress=False)
    (src / "b" / "1.jpg").unlink()
    with pytest.raises(PrepareError, match=r"\(same settings, other files, labels or classes; its source"):
        prepare(src, tmp_path / "out", size=16, shard_size=3, workers=1, progress=False)


def test_prepare_write_errors_are_messages(tmp_path, capsys, monkeypatch):
    # a read-only or full DST was a traceback
    src = tmp_path / "src"
    _class_folders(src, np.random.default_rng(17))
    from convnet.prepare import main

    def full(path, array):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(shards, "atomic_save_npy", full)
    assert main([str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: prepare: [Errno 28] No space left on device: '" in err and "train-00000.npy'; rerun" in err


def test_prepare_deletes_only_its_own_temporaries(tmp_path):
    # a resume deleted every ".*.tmp*" in DST (a user's .env.tmpl), and a folder so named stopped it
    src, dst = tmp_path / "src", tmp_path / "out"
    _class_folders(src, np.random.default_rng(18))
    prepare(src, dst, size=16, shard_size=2, workers=1, progress=False, stop_after_shards=1)
    (dst / ".env.tmpl").write_text("SECRET=1")
    (dst / ".cache.tmpdir").mkdir()
    dead = dst / f".train-00001.npy.tmp{dead_pid()}"  # a run killed while writing its second shard
    dead.write_bytes(b"half a shard")
    assert len(open_dataset(prepare(src, dst, size=16, shard_size=2, workers=1, progress=False)).train) == 4
    assert (dst / ".env.tmpl").read_text() == "SECRET=1" and (dst / ".cache.tmpdir").is_dir()
    assert not dead.exists() and sorted(f.name for f in dst.glob(".*.tmp*")) == [".cache.tmpdir", ".env.tmpl"]


def test_prepare_refuses_val_without_train(tmp_path):
    # became one training class named "val", silently
    _class_folders(tmp_path / "src" / "val", np.random.default_rng(16))
    with pytest.raises(PrepareError, match=r"src has val/ but no train/ \(expected .*src/train/<class>/<images>\)"):
        prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1, progress=False)


# ---- opening datasets ----

def test_open_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="not a prepared dataset: run python -m convnet.prepare"):
        open_dataset(tmp_path / "junk")


def test_open_dataset_damaged_files(tmp_path):
    path = builtin.generate(tmp_path / "d", num_train=12, num_val=4, size=16, seed=0, num_classes=3, workers=1)
    files = {f: (path / f).read_bytes() for f in ("index.json", "train-00000.npy", "train-labels.npy", "mean.npy")}

    def damaged(name, write, match):
        write(path / name)
        with pytest.raises(ValueError, match=match):
            open_dataset(path)
        (path / name).write_bytes(files[name])

    # was an AttributeError ('list' object has no attribute 'get')
    damaged("index.json", lambda p: p.write_text("[1, 2]"), "not a prepared dataset")
    # were taken, to fail later: a TypeError in the Loader, a crop that "does not fit in 12x12 images"
    damaged("train-00000.npy", lambda p: np.save(p, np.zeros((12, 16, 16, 3), np.float32)), "holds float32")
    damaged("train-00000.npy", lambda p: np.save(p, np.zeros((12, 12, 12, 3), np.uint8)),
            r"holds uint8 \(12, 12, 12, 3\), the index says 12 uint8 images of \(16, 16, 3\)")
    # were taken: a label out of range stopped training at the step that drew it, 0.7 became class 0
    damaged("train-labels.npy", lambda p: np.save(p, np.full(12, 7, np.int32)), r"labels from 7 to 7, outside 0..2")
    damaged("train-labels.npy", lambda p: np.save(p, np.full(12, 0.7, np.float32)), "not integer labels")
    # made every training image NaN: the run stopped at step 0, suggesting a smaller --lr
    index = json.loads(files["index.json"])
    index["pca"]["eigval"][0] = float("nan")
    damaged("index.json", lambda p: p.write_text(json.dumps(index)), "PCA lighting values are not finite")
    damaged("mean.npy", lambda p: np.save(p, np.full((16, 16, 3), np.inf, np.float32)), "mean image")
    # were taken: the image size came from mean.npy ("--crop 56 is larger than the dataset's images (3)")
    damaged("mean.npy", lambda p: np.save(p, np.zeros(3, np.float32)),
            r"mean.npy holds float32 \(3,\), not the mean of the 16x16 RGB images the index describes")
    damaged("mean.npy", lambda p: np.save(p, np.zeros((8, 8, 3), np.float32)), r"mean.npy holds float32 \(8, 8, 3\)")
    damaged("mean.npy", lambda p: p.write_bytes(files["mean.npy"][:1000]), r"mean.npy is truncated: 1000 bytes")
    # a truncated labels file: "EOF: reading array header", naming no file
    damaged("train-labels.npy", lambda p: p.write_bytes(files["train-labels.npy"][:100]),
            r"train-labels.npy is not a readable .npy file \(EOF")
    damaged("train-labels.npy", lambda p: p.write_bytes(files["train-labels.npy"][:-4]),
            r"train-labels.npy is truncated: 172 bytes, its header \(int32 \(12,\)\) needs 176")
    # an unclosed bracket in the header: NumPy's tokenizer raised TokenError, naming no file
    damaged("train-labels.npy", lambda p: p.write_bytes(files["train-labels.npy"].replace(b"(12,)", b"(12, ", 1)),
            r"train-labels.npy is not a readable .npy file")
    # a damaged index.json: bare TypeErrors and KeyErrors ("'int' object is not subscriptable"), or a
    # file outside the folder
    for where, value, why in [(("splits",), 3, "splits 3 is not a JSON object"),
                              (("splits", "train", "shards", 0), 1, r"split 'train': shards \[1\] is not a list"),
                              (("splits", "train", "shards", 0, "file"), "../train-00000.npy",
                               "split 'train': shards .* is not a list"),
                              (("splits", "train", "shards", 0, "count"), 11,
                               "split 'train': its shards hold 11 images, its count says 12"),
                              (("splits", "val", "labels"), ["x"], r"split 'val': labels \['x'\] is not a file name"),
                              (("mean",), None, "mean None is not a file name"),
                              (("classes",), [], r"classes \[\] is not a list of class names"),
                              (("image_size",), 16.0, "image_size 16.0 is not an integer"),
                              (("pca", "eigvec", 1), [1, 2], "pca .* is not 3 eigenvalues and a 3x3 matrix")]:
        index = json.loads(files["index.json"])
        o = index
        for k in where[:-1]:
            o = o[k]
        o[where[-1]] = value
        damaged("index.json", lambda p: p.write_text(json.dumps(index)), f"index.json is damaged: {why}")
    assert len(open_dataset(path).train) == 12


def test_open_dataset_checks_every_shard(prepared, tmp_path):
    # the shards after the first were mapped on first use: a truncated one stopped training
    # in the loader thread with "mmap length is greater than file size", naming no file
    import shutil
    path = tmp_path / "p"
    shutil.copytree(prepared, path)
    shard = path / "train-00002.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:2000])
    with pytest.raises(ValueError, match=f"{shard} is truncated: 2000 bytes, its header "
                                         r"\(uint8 \(2, 32, 32, 3\)\) needs 6272"):
        open_dataset(path)
    np.save(shard, np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"train-00002.npy holds uint8 \(2, 16, 16, 3\), the index says 2 uint8 "
                                         r"images of \(32, 32, 3\)"):
        open_dataset(path)
    shard.write_bytes(b"junk")
    with pytest.raises(ValueError, match="train-00002.npy is not a readable .npy file"):
        open_dataset(path)
    shard.write_bytes(good)
    np.testing.assert_array_equal(np.asarray(open_dataset(path).train.images),
                                  np.asarray(open_dataset(prepared).train.images))


def test_shard_damaged_after_opening_is_named(prepared, tmp_path):
    # a shard is mapped when first used, maybe hours after open_dataset checked it: a truncated one
    # failed with "mmap length is greater than file size", garbage with "This file contains pickled
    # (object) data", neither naming the file
    import shutil
    path = tmp_path / "p"
    shutil.copytree(prepared, path)
    images = open_dataset(path).train.images  # train-00002.npy holds images 6 and 7, not mapped yet
    shard = path / "train-00002.npy"
    good = shard.read_bytes()
    os.truncate(shard, 200)
    with pytest.raises(ValueError, match=f"{shard} is truncated: 200 bytes, its header "
                                         r"\(uint8 \(2, 32, 32, 3\)\) needs 6272"):
        images[6]
    shard.write_bytes(b"garbage " * 1000)
    with pytest.raises(ValueError, match=f"{shard} is not a readable .npy file"):
        images.take([0, 7])
    np.save(shard, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"train-00002.npy holds uint8 \(2, 32, 32\), the index says 2 uint8 "
                                         r"images of \(32, 32, 3\)"):
        images[-1]
    shard.write_bytes(good)
    np.testing.assert_array_equal(np.asarray(images), np.asarray(open_dataset(prepared).train.images))


def test_sharded_images_read_as_one_array(prepared):
    ds = open_dataset(prepared)
    imgs = ds.train.images
    assert isinstance(imgs, shards.ShardedImages) and len(imgs) == 8
    whole = np.asarray(imgs)
    assert whole.shape == (8, SIZE, SIZE, 3)
    idx = np.array([7, 0, 3, 3, 5])
    np.testing.assert_array_equal(imgs[idx], whole[idx])
    np.testing.assert_array_equal(imgs[2:6], whole[2:6])
    np.testing.assert_array_equal(imgs[-1], whole[-1])
    np.testing.assert_array_equal(imgs[4, 1:3], whole[4, 1:3])
    with pytest.raises(IndexError):
        imgs[8]


def write_fake_cifar(folder, rng, per_batch=6):
    folder.mkdir()
    names = [f"class{i}" for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        batches[name] = (data, labels)
    return names, batches


def test_cifar_folder(tmp_path):
    names, batches = write_fake_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(4))
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        ds = open_dataset(path)
        assert ds.classes == names and len(ds.train) == 30 and len(ds.val) == 6 and ds.image_size == 32
    data, labels = batches["data_batch_2"]
    img = ds.train.images[6 + 4]  # the 5th image of the 2nd batch
    # Row layout: 1024 red values, then green, then blue, each 32x32 row-major.
    assert img[7, 9, 0] == data[4, 7 * 32 + 9] and img[7, 9, 2] == data[4, 2048 + 7 * 32 + 9]
    assert ds.train.labels[10] == labels[4]
    assert list(ds.val.labels) == batches["test_batch"][1]
    np.testing.assert_allclose(ds.mean, np.asarray(ds.train.images, np.float64).mean(0), atol=1e-3)
    loader = Loader(ds.train, 8, train=True, crop=28, mean=ds.mean, pca=ds.pca, seed=1)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 28, 28) and y.shape == (8,)


def test_cifar_damaged_files(tmp_path):
    # were tracebacks naming no file (UnpicklingError, EOFError, TypeError, OverflowError), or went
    # through with pixel values wrapped (300 -> 44, -1 -> 255)
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder, np.random.default_rng(4))
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    for name, blob, match in [
            ("data_batch_1", files["data_batch_1"][:100], "data_batch_1 is not a CIFAR-10 pickle"),
            ("test_batch", b"", "test_batch is not a CIFAR-10 pickle"),
            ("batches.meta", pickle.dumps([1, 2]), "batches.meta is not a CIFAR-10 pickle: it holds no label_names"),
            ("data_batch_2", pickle.dumps({b"labels": [1]}), "it holds no data"),
            ("data_batch_3", pickle.dumps({b"data": np.full((2, 3072), 300), b"labels": [1, 1]}),
             "data_batch_3 data: values from 300 to 300 do not fit in uint8"),
            ("data_batch_3", pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 1]}),
             "data must be integers, got float32"),
            ("data_batch_4", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2**32 + 1]}),
             "data_batch_4 labels: values from 1 to 4294967297 do not fit in int32")]:
        (folder / name).write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            open_dataset(folder)
        (folder / name).write_bytes(files[name])
    assert len(open_dataset(folder).train) == 30


class _Planted:
    """Unpickles as a call of os.mkdir: what a pickle from anywhere could do on opening."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_files_name_nothing_but_arrays(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder, np.random.default_rng(5))
    data = np.random.default_rng(6).integers(0, 256, (3, 3072), dtype=np.uint8)
    (folder / "data_batch_2").write_bytes(pickle.dumps(
        {b"data": data, b"labels": [np.int64(1), 2, 3]}, protocol=protocol))  # numpy's own pickles load
    ds = open_dataset(folder)
    assert len(ds.train) == 27 and list(ds.train.labels[6:9]) == [1, 2, 3]
    np.testing.assert_array_equal(ds.train.images[6, 0, 1], data[0, [1, 1025, 2049]])
    planted = tmp_path / "planted"
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": data, b"labels": [1, 2, 3], b"x": _Planted(planted)}, protocol=protocol))
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 pickle.*names .*mkdir"):
        open_dataset(folder)
    assert not planted.exists()


# ---- the built-in dataset ----

def test_builtin_deterministic(tmp_path):
    kw = dict(num_train=40, num_val=12, size=24, seed=7, num_classes=12)
    a = builtin.generate(tmp_path / "a", workers=1, **kw)
    b = builtin.generate(tmp_path / "b", workers=2, **kw)
    for f in ("train-00000.npy", "train-labels.npy", "val-00000.npy", "val-labels.npy", "mean.npy", "index.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = builtin.generate(tmp_path / "c", **dict(kw, seed=8))
    assert (a / "train-00000.npy").read_bytes() != (c / "train-00000.npy").read_bytes()
    ds = open_dataset(a)
    assert len(ds.classes) == 12 and len(ds.train) == 40 and len(ds.val) == 12
    assert np.bincount(ds.train.labels, minlength=12).min() == 3  # balanced
    assert ds.train.images.shape == (40, 24, 24, 3) and ds.train.images.std() > 20
    # ensure() reuses a matching folder and regenerates a different one.
    stamp = (a / "train-00000.npy").stat().st_mtime_ns
    assert builtin.ensure(a, **kw) == a and (a / "train-00000.npy").stat().st_mtime_ns == stamp
    builtin.ensure(a, **dict(kw, num_val=6))
    assert len(open_dataset(a).val) == 6
    with pytest.raises(ValueError, match="num_classes"):
        builtin.generate(tmp_path / "d", num_classes=40)


def test_builtin_cache_damaged_is_made_again(tmp_path):
    # the cache's index matched, so a truncated shard or a lost labels file was handed to
    # open_dataset every run: "--data: ... is not a prepared dataset", for a --data never given
    kw = dict(num_train=20, num_val=8, size=16, seed=1)
    path = builtin.ensure(tmp_path / "b", verbose=False, **kw)
    good = (path / "train-00000.npy").read_bytes()
    with open(path / "train-00000.npy", "r+b") as f:
        f.truncate(len(good) // 2)
    assert builtin.ensure(path, verbose=False, **kw) == path
    assert (path / "train-00000.npy").read_bytes() == good
    (path / "val-labels.npy").unlink()
    builtin.ensure(path, verbose=False, **kw)
    assert len(open_dataset(path).val) == 8
    # an index.json that is valid JSON but not an object: AttributeError ('list' object has no
    # attribute 'get') from the no-argument training run
    (path / "index.json").write_text("[1, 2]")
    builtin.ensure(path, verbose=False, **kw)
    assert len(open_dataset(path).train) == 20


def _listing(folder):
    return {f.name: f.read_bytes() if f.is_file() else "folder" for f in sorted(folder.iterdir())}


def test_builtin_refuses_a_folder_holding_other_data(prepared, tmp_path, capsys):
    # wrote its index.json, mean.npy, train-00000.npy, labels and val-* over a prepared dataset
    # (exit 0), leaving the other shards as orphans
    import shutil
    kw = dict(num_train=12, num_val=4, size=16, seed=0)
    ours = tmp_path / "prepared"
    shutil.copytree(prepared, ours)
    before = _listing(ours)
    refused = (rf"builtin: {ours} already holds a dataset \(source: prepare\) \(prepare-plan.json, "
               r"prepare-report.txt, train-00000.json, train-00000.stats.npz, ...\): use another folder, or "
               r"delete those files first")
    with pytest.raises(builtin.BuiltinError, match=refused):
        builtin.generate(ours, workers=1, **kw)
    with pytest.raises(builtin.BuiltinError, match=refused):
        builtin.ensure(ours, verbose=False, **kw)
    assert builtin.main([str(ours), "--num-train", "12", "--num-val", "4", "--size", "16", "--force"]) == 2
    assert f"error: builtin: {ours} already holds a dataset (source: prepare)" in capsys.readouterr().err
    assert _listing(ours) == before
    # A dataset without a source, and the user's own files: refused too, and no .lock is left there.
    (ours / "index.json").write_text(json.dumps({"format": "convnet-shards"}))
    with pytest.raises(builtin.BuiltinError, match=r"holds a dataset \(source: None\)"):
        builtin.generate(ours, workers=1, **kw)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(builtin.BuiltinError, match=rf"{mine} already holds files that are not the built-in "
                                                   r"dataset's \(notes.txt\)"):
        builtin.generate(mine, workers=1, **kw)
    assert _listing(mine) == {"notes.txt": b"keep"}
    # A built-in dataset with a file of the user's beside it.
    bi = builtin.generate(tmp_path / "bi", workers=1, **kw)
    (bi / "preview.png").write_bytes(b"png")
    with pytest.raises(builtin.BuiltinError, match=r"not the built-in dataset's \(preview.png\)"):
        builtin.generate(bi, workers=1, **dict(kw, seed=1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(builtin.BuiltinError, match="file is not a folder"):
        builtin.generate(tmp_path / "file", workers=1, **kw)


def test_builtin_deletes_only_its_own_temporaries(tmp_path):
    # every ".*.tmp*" was deleted: the user's .env.tmpl was lost, and a folder .cache.tmpdir crashed
    # the run with IsADirectoryError
    kw = dict(num_train=12, num_val=4, size=16, workers=1)
    path = builtin.generate(tmp_path / "b", seed=0, **kw)
    (path / ".env.tmpl").write_text("SECRET=1")
    (path / ".cache.tmpdir").mkdir()
    (path / ".cache.tmpdir" / "x").write_text("x")
    dead = path / f".train-00000.npy.tmp{dead_pid()}"  # a generation killed while writing the shard
    dead.write_bytes(b"half a shard")
    live = path / ".mean.npy.tmp1"  # pid 1 is alive: its writer may be busy with it
    live.write_bytes(b"busy")
    # A regeneration (other settings), also of a dataset whose index a cut-short generation deleted.
    builtin.generate(path, seed=1, **kw)
    (path / "index.json").unlink()
    builtin.generate(path, seed=2, **kw)
    assert open_dataset(path).info["builtin"]["seed"] == 2
    assert (path / ".env.tmpl").read_text() == "SECRET=1" and (path / ".cache.tmpdir" / "x").read_text() == "x"
    assert not dead.exists() and live.read_bytes() == b"busy"
    assert sorted(f.name for f in path.glob(".*.tmp*")) == [".cache.tmpdir", ".env.tmpl", ".mean.npy.tmp1"]


def test_builtin_checks_arguments_first(tmp_path):
    # NumPy integers: size np.int64(16) wrote `(12, np.int64(16), np.int64(16), 3)` into the shard's
    # header (unreadable, and ensure() called it up to date); num_train np.int64(12) failed in
    # json.dumps after all the rendering, leaving no index.json
    np_kw = dict(num_train=np.int64(12), num_val=np.int32(4), size=np.int64(16), seed=np.uint8(1),
                 num_classes=np.int64(3))
    path = builtin.generate(tmp_path / "np", workers=np.int64(1), **np_kw)
    ds = open_dataset(path)
    assert ds.train.images.shape == (12, 16, 16, 3) and len(ds.val) == 4 and len(ds.classes) == 3
    assert b"'shape': (12, 16, 16, 3)" in (path / "train-00000.npy").read_bytes()[:128]
    assert ds.info["builtin"] == {"generator": builtin.GENERATOR_VERSION, "num_train": 12, "num_val": 4, "size": 16,
                                  "seed": 1, "num_classes": 3}
    stamp = (path / "train-00000.npy").stat().st_mtime_ns
    assert builtin.ensure(path, verbose=False, **np_kw) == path
    assert (path / "train-00000.npy").stat().st_mtime_ns == stamp
    # A bad argument is named before anything is written: size=24.5 deleted a good dataset's
    # index.json first, seed=-1 failed in NumPy ("expected non-negative integer"), and ensure()
    # with size=16.5 returned the size-16 dataset.
    before = _listing(path)
    good = dict(num_train=12, num_val=4, size=16, seed=1, num_classes=3)
    for name, value, error, message in [
            ("size", 16.5, TypeError, "builtin: size must be an integer, got 16.5"),
            ("size", 8, ValueError, "builtin: size must be >= 16, got 8"),
            ("num_train", "12", TypeError, "builtin: num_train must be an integer, got '12'"),
            ("num_train", -1, ValueError, "builtin: num_train must be >= 0, got -1"),
            ("num_val", True, TypeError, "builtin: num_val must be an integer, got True"),
            ("seed", -1, ValueError, "builtin: seed must be >= 0, got -1"),
            ("seed", None, TypeError, "builtin: seed must be an integer, got None"),
            ("num_classes", 3.0, TypeError, "builtin: num_classes must be an integer, got 3.0"),
            ("num_classes", 13, ValueError, r"builtin: num_classes must be in 2..12, got 13"),
            ("workers", 1.5, TypeError, "builtin: workers must be an integer, got 1.5"),
            ("workers", 0, ValueError, "builtin: workers must be >= 1, got 0")]:
        with pytest.raises(error, match=message):
            builtin.generate(path, **{"workers": 1, **good, name: value})
        if name != "workers":
            with pytest.raises(error, match=message):
                builtin.ensure(path, verbose=False, **{**good, name: value})
    with pytest.raises(ValueError, match="need a positive number of images"):
        builtin.generate(path, **dict(good, num_train=0, num_val=0))
    assert _listing(path) == before
    with pytest.raises(ValueError, match="seed must be >= 0"):
        builtin.generate(tmp_path / "new", **dict(good, seed=-1))
    assert not (tmp_path / "new").exists()


def test_builtin_cli_checks_arguments_first(tmp_path, capsys, monkeypatch):
    # --seed -1 and the range errors were tracebacks (the seed's from deep inside NumPy, after the
    # folder was locked); --preview in a missing folder and --linear-baseline without a split
    # failed only after generating
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "cache"))
    out = tmp_path / "d"
    small = [str(out), "--num-train", "12", "--num-val", "4", "--size", "16"]
    for args, message in [(["--seed", "-1"], "builtin: seed must be >= 0, got -1"),
                          (["--size", "8"], "builtin: size must be >= 16, got 8"),
                          (["--num-classes", "1"], "builtin: num_classes must be in 2..12, got 1"),
                          (["--num-val", "-2"], "builtin: num_val must be >= 0, got -2"),
                          (["--preview", str(tmp_path / "missing" / "p.png")],
                           f"--preview {tmp_path / 'missing' / 'p.png'}: not a file in an existing folder"),
                          (["--preview", str(tmp_path)], f"--preview {tmp_path}: not a file in an existing folder"),
                          (["--num-val", "0", "--linear-baseline"],
                           r"--linear-baseline needs training and validation images \(--num-train and --num-val")]:
        with pytest.raises(SystemExit) as e:
            builtin.main(small + args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert re.search(f"error: {message}", err) and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()
    path = builtin.generate(out, num_train=12, num_val=0, size=16, workers=1)
    with pytest.raises(ValueError, match=f"linear_baseline: {path} needs training and validation images"):
        builtin.linear_baseline(path)


def test_builtin_cli_preview_of_small_datasets(tmp_path, capsys, monkeypatch):
    # rows of 1 and 2 images: "all the input array dimensions ... must match"; a class without an
    # image: "need at least one array to concatenate"
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "cache"))
    for num_train, width in [(15, 2), (5, 1)]:
        out, png = tmp_path / f"d{num_train}", tmp_path / f"p{num_train}.png"
        assert builtin.main([str(out), "--num-train", str(num_train), "--num-val", "0", "--size", "16",
                             "--preview", str(png)]) == 0
        assert f"preview: {png} (one class per row: circle, square," in capsys.readouterr().out
        ds = open_dataset(out)
        grid = np.asarray(Image.open(png))
        assert grid.shape == (10 * 16, width * 16, 3)
        for k in range(10):
            idx = np.nonzero(np.asarray(ds.train.labels) == k)[0]
            for j in range(width):
                cell = grid[k * 16:(k + 1) * 16, j * 16:(j + 1) * 16]
                np.testing.assert_array_equal(cell, ds.train.images[idx[j]] if j < len(idx) else 0)


# Generates the built-in dataset with its first chunk slowed down, after touching a file that
# says generation has begun (its temporary shard files exist).
_SLOW_BUILTIN = r"""
import sys, time
from pathlib import Path
from convnet.data import builtin
real = builtin._render_chunk
def slow(args):
    Path(sys.argv[2]).touch()
    time.sleep(1.5)
    return real(args)
builtin._render_chunk = slow
builtin.ensure(sys.argv[1], num_train=30, num_val=10, size=16, seed=2, verbose=False)
"""


def test_builtin_two_processes_at_once(tmp_path, capsys):
    # the second deleted the first's temporary files as leftovers: FileNotFoundError in os.replace
    path, started = tmp_path / "cache" / "builtin", tmp_path / "started"
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-c", _SLOW_BUILTIN, str(path), str(started)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kw = dict(num_train=30, num_val=10, size=16, seed=2)
    try:
        t0 = time.time()
        while not started.exists() and first.poll() is None and time.time() - t0 < 60:
            time.sleep(0.01)
        assert started.exists(), first.communicate()[1]
        assert builtin.ensure(path, verbose=True, **kw) == path  # the second run, while the first generates
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    # The second waited for the first, then used its dataset rather than making it again.
    err = capsys.readouterr().err
    assert f"builtin: waiting for another process generating {path}" in err and "images of" not in err, err
    fresh = builtin.generate(tmp_path / "fresh", workers=1, **kw)
    for f in ("train-00000.npy", "train-labels.npy", "val-00000.npy", "val-labels.npy", "mean.npy", "index.json"):
        assert (path / f).read_bytes() == (fresh / f).read_bytes(), f
    assert not list(path.glob(".*.tmp*"))


_SLOW_PREPARE = r"""
import sys, time
from pathlib import Path
import convnet.data.prepare as p
real = p.load_image
def slow(path, size):
    Path(sys.argv[3]).touch()
    time.sleep(0.2)
    return real(path, size)
p.load_image = slow
p.prepare(sys.argv[1], sys.argv[2], size=int(sys.argv[4]), shard_size=3, workers=1, progress=False)
"""


def test_prepare_two_processes_into_one_folder(tree, prepared, tmp_path, capsys):
    # as for the built-in cache: the second writer deleted the first's temporaries (and both wrote
    # the same shards); now the second waits for the first's lock, then finds the work done
    dst, started = tmp_path / "dst", tmp_path / "started"
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(tree), str(dst), str(started), str(SIZE)],
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not started.exists() and first.poll() is None and time.time() - t0 < 60:
            time.sleep(0.01)
        assert started.exists(), first.communicate()[1]
        prepare(tree, dst, size=SIZE, shard_size=3, workers=1, progress=False)  # the second, meanwhile
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    assert f"prepare: waiting for another process preparing {dst}" in capsys.readouterr().err
    for f in sorted(prepared.glob("*.npy")) + [prepared / "index.json"]:
        assert (dst / f.name).read_bytes() == f.read_bytes(), f.name
    assert not list(dst.glob(".*.tmp*"))


# A worker sends its parent the SIGTERM that `kill PID` would (once: the first to create the
# marker file), and goes on working. With "twice", a second SIGTERM a second later, while the
# parent would wait for this task.
_SIGTERM_FROM_A_WORKER = r"""
import os, signal, sys, time
from pathlib import Path
marker, twice = sys.argv[-2], sys.argv[-1] == "twice"
def sigterm_once():
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(1.0)
    if twice:
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(0.5)
"""
_SIGTERM_BUILTIN = _SIGTERM_FROM_A_WORKER + r"""
from convnet.data import builtin
os.cpu_count = lambda: 2  # a pool on any machine
real = builtin._render_chunk
def render(args):
    sigterm_once()
    return real(args)
builtin._render_chunk = render
builtin.main([sys.argv[1], "--num-train", "1500", "--num-val", "0", "--size", "64"])
"""
_SIGTERM_PREPARE = _SIGTERM_FROM_A_WORKER + r"""
import convnet.data.prepare as p
real = p.load_image
def load_image(path, size):
    sigterm_once()
    return real(path, size)
p.load_image = load_image
sys.exit(p.main([sys.argv[1], sys.argv[2], "--size", "32", "--shard-size", "1", "--quiet", "--workers", "2"]))
"""


@pytest.mark.parametrize("twice", [False, True])
@pytest.mark.parametrize("tool", ["builtin", "prepare"])
def test_sigterm_stops_the_workers_too(tool, twice, tree, tmp_path):
    """A SIGTERM to the tool's own process (`kill PID`) ended it at once and left its workers: the
    built-in generator's wrote BrokenPipeError tracebacks, convnet.prepare's waited for work forever.
    Now it is handled as a Ctrl-C is: the workers are stopped, one line says so, exit 143, and a
    rerun finishes the job. Twice: convnet.prepare waited for the shards in progress, and a second
    signal (or Ctrl-C) in that wait left the workers, and the exit, waiting forever; now it stops
    the workers at once."""
    marker, dst = tmp_path / "sent", tmp_path / "out"
    times = "twice" if twice else "once"
    if tool == "builtin":
        code, args = _SIGTERM_BUILTIN, (dst, marker, times)
    else:
        code, args = _SIGTERM_PREPARE, (tree, dst, marker, times)
    rc, out, err = _run_python(code, *args, timeout=60)
    assert marker.exists() and rc == 143, (rc, err)
    assert "Traceback" not in err and "Error" not in err, err
    assert err.strip().endswith("stopped by SIGTERM; " + ("a rerun generates it again" if tool == "builtin"
                                                          else "rerun the same command to resume")), err
    assert not (dst / "index.json").exists()
    rc, out, err = _run_python(code, *args)  # the rerun (the marker is there: no signal)
    assert rc == 0 and (dst / "index.json").exists(), err
    assert not list(dst.glob(".*.tmp*"))


def test_builtin_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path))
    assert builtin.default_path() == tmp_path / "builtin-64-s0"
    assert builtin.default_path(32, 1, 100, 10, 5) == tmp_path / "builtin-32-s1-100-10-c5"


# ---- the loader ----

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return open_dataset(builtin.generate(tmp_path_factory.mktemp("bi"), num_train=50, num_val=13, size=20, seed=3))


def batches(loader):
    return [(x.numpy(), y.numpy()) for x, y in loader]


def test_loader_matches_reference(device, small):
    tr = small.train
    loader = Loader(tr, 8, train=True, crop=16, mean=small.mean, pca=small.pca, lighting=0.1, device=device,
                    seed=11, epoch=2)
    out = batches(loader)
    assert len(out) == len(loader) == 6  # 50 // 8, the partial batch dropped
    seen = []
    for b, (x, y) in enumerate(out):
        idx = loader.batch_indices(b)
        offsets, flips, shift = loader.draws(b, len(idx))
        assert flips.any() and np.abs(shift).max() > 0.01
        want = ref_augment(np.asarray(tr.images)[idx], offsets, flips, shift, small.mean, 16, 16)
        np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-3)
        np.testing.assert_array_equal(y, tr.labels[idx])
        assert x.dtype == np.float32 and y.dtype == np.int32
        seen += list(idx)
    assert len(set(seen)) == 48  # no image twice in an epoch


def test_loader_determinism_and_resume(small):
    kw = dict(train=True, crop=16, mean=small.mean, pca=small.pca, seed=5)
    a = batches(Loader(small.train, 7, epoch=1, workers=1, **kw))
    b = batches(Loader(small.train, 7, epoch=1, workers=3, prefetch=0, **kw))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    resumed = batches(Loader(small.train, 7, epoch=1, start_batch=4, **kw))
    assert len(resumed) == len(a) - 4
    for (xa, ya), (xr, yr) in zip(a[4:], resumed):
        assert np.array_equal(xa, xr) and np.array_equal(ya, yr)
    loader = Loader(small.train, 7, epoch=1, start_batch=4, **kw)
    assert len(batches(loader)) == 3 and len(batches(loader)) == 7  # start_batch applies once
    loader.set_epoch(2)
    c = batches(loader)
    assert not np.array_equal(a[0][1], c[0][1])  # another epoch: another order
    assert not np.array_equal(a[0][0], batches(Loader(small.train, 7, epoch=1, **dict(kw, seed=6)))[0][0])


def test_loader_workers_run_cpu_kernels_on_one_thread(small, monkeypatch):
    """The loader's threads limit their own OpenMP teams to one thread (a second team of several
    put the training thread's team to sleep between regions: the default run went from 1,900 to
    2,150 images/s), and the limit is per thread: the caller's is untouched."""
    import threading

    calls = []
    real = convnet._C.set_cpu_threads_of_this_thread

    def record(n):
        real(n)
        calls.append((threading.current_thread().name, n, convnet._C.cpu_threads_of_this_thread()))

    monkeypatch.setattr(convnet._C, "set_cpu_threads_of_this_thread", record)
    before = convnet._C.cpu_threads_of_this_thread()
    batches(Loader(small.train, 7, train=True, crop=16, mean=small.mean, pca=small.pca, workers=2))
    assert calls and all(name.startswith("convnet-loader") and n == 1 and now == 1 for name, n, now in calls), calls
    assert convnet._C.cpu_threads_of_this_thread() == before
    with pytest.raises(ValueError, match="set_cpu_threads_of_this_thread: n must be >= 1, got 0"):
        real(0)


def test_loader_eval_and_steps_off(device, small):
    val = small.val
    loader = Loader(val, 5, train=False, crop=16, mean=small.mean, device=device)
    out = batches(loader)
    assert [len(y) for _, y in out] == [5, 5, 3]  # keeps the partial batch
    images = np.asarray(val.images)
    c = (20 - 16) // 2
    want = images[:, c:c + 16, c:c + 16].transpose(0, 3, 1, 2) - small.mean[c:c + 16, c:c + 16].transpose(2, 0, 1)
    np.testing.assert_allclose(np.concatenate([x for x, _ in out]), want, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), val.labels)
    # Training with every step off: the images themselves, shuffled.
    raw = Loader(small.train, 10, train=True, crop=None, flip=False, lighting=0, mean=None, device=device, seed=2)
    for b, (x, y) in enumerate(batches(raw)):
        idx = raw.batch_indices(b)
        np.testing.assert_array_equal(x, np.asarray(small.train.images)[idx].transpose(0, 3, 1, 2))
    # A per-channel mean works too; lighting without pca is refused.
    x, _ = next(iter(Loader(val, 4, train=False, mean=np.array([1, 2, 3], np.float32), device=device)))
    np.testing.assert_allclose(x.numpy()[0, :, 0, 0], images[0, 0, 0] - [1, 2, 3])
    with pytest.raises(ValueError, match="pca"):
        Loader(small.train, 4, train=True)
    with pytest.raises(TypeError, match="Loader: split.images must be uint8"):
        Loader(convnet.data.Split("f", np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, np.int32)), 2, train=False)
    with pytest.raises(ValueError, match="crop"):
        Loader(small.train, 4, train=True, crop=21, lighting=0)
    with pytest.raises(ValueError, match="lighting must be finite as a float32 and >= 0, got nan"):
        Loader(small.train, 4, train=True, lighting=float("nan"))  # was: no lighting, silently


def test_loader_checks_its_settings(small):
    """int() and bool() took these without a word: a batch of 2.5 was 2, train="False" shuffled and
    cropped a validation split; a NaN mean or PCA value made every image NaN; labels shorter than
    the images left the rest unseen; negative seeds failed at the first batch, naming nothing."""
    tr, kw = small.train, dict(train=True, crop=16, mean=small.mean, pca=small.pca)
    nan3 = np.array([1.0, np.nan, 2.0])
    for change, error, match in [
            (dict(batch_size=2.5), TypeError, "Loader: batch_size must be an integer, got 2.5"),
            (dict(batch_size=True), TypeError, "Loader: batch_size must be an integer"),
            (dict(batch_size="8"), TypeError, "Loader: batch_size must be an integer"),
            (dict(batch_size=0), ValueError, "Loader: batch_size must be >= 1, got 0"),
            (dict(train="False"), TypeError, "Loader: train must be True or False, got 'False'"),
            (dict(flip="False"), TypeError, "Loader: flip must be True or False"),
            (dict(drop_last="no"), TypeError, "Loader: drop_last must be True or False"),
            (dict(crop=15.7), TypeError, "Loader: crop must be an integer, got 15.7"),
            (dict(crop=(16,)), ValueError, r"Loader: crop must be a side or \(height, width\), got \(16,\)"),
            (dict(crop=(16, 12, 5)), ValueError, "Loader: crop must be a side or"),
            (dict(seed=-1), ValueError, "Loader: seed must be >= 0, got -1"),
            (dict(seed=1.5), TypeError, "Loader: seed must be an integer"),
            (dict(epoch=-2), ValueError, "Loader: epoch must be >= 0, got -2"),
            (dict(start_batch=1.9), TypeError, "Loader: start_batch must be an integer"),
            (dict(workers=0), ValueError, "Loader: workers must be >= 1, got 0"),
            (dict(workers=True), TypeError, "Loader: workers must be an integer"),
            (dict(prefetch=-5), ValueError, "Loader: prefetch must be >= 0, got -5"),
            (dict(lighting=float("inf")), ValueError, "Loader: lighting must be finite as a float32"),
            (dict(lighting=1e39), ValueError, "Loader: lighting must be finite as a float32"),
            (dict(mean=nan3), ValueError, "Loader: mean holds NaN or infinite values"),
            (dict(mean=np.full(3, 1e39)), ValueError, "Loader: mean: 1e[+]?39 is past float32's range"),
            (dict(mean=np.ones(3, complex)), TypeError, "Loader: mean: unsupported dtype complex128"),
            (dict(pca=(nan3, small.pca[1])), ValueError, "Loader: pca eigval holds NaN or infinite values"),
            (dict(pca=(small.pca[0], np.eye(2))), ValueError, r"Loader: pca eigvec must have shape \(3, 3\), got \(2, 2\)"),
            (dict(pca=(small.pca[0],)), ValueError, r"Loader: pca must be \(eigval \(3,\), eigvec \(3, 3\)\)")]:
        args = {**kw, "batch_size": 4, **change}
        with pytest.raises(error, match=match):
            Loader(tr, args.pop("batch_size"), **args)
    loader = Loader(tr, 4, **kw)
    for call, error, match in [(lambda: loader.set_epoch(0, start_batch=2.5), TypeError, "start_batch must be an integer"),
                               (lambda: loader.set_epoch(-1), ValueError, "Loader: epoch must be >= 0, got -1"),
                               (lambda: loader.set_epoch(1.5), TypeError, "Loader: epoch must be an integer")]:
        with pytest.raises(error, match=match):
            call()
    assert (loader.epoch, loader.start_batch) == (0, 0)  # a refused call changed nothing

    class Uneven:  # images and labels of different lengths
        def __init__(self, n_images, labels):
            self.images, self.labels = tr.images[:n_images], labels

        def __len__(self):
            return len(self.labels)

    labels = np.asarray(tr.labels)
    for split, shape in [(Uneven(20, labels[:10]), "(10,)"), (Uneven(10, labels[:20]), "(20,)"),
                         (Uneven(10, labels[:10, None]), "(10, 1)")]:
        with pytest.raises(ValueError, match=f"the split has {len(split.images)} images but labels of shape "
                                             f"{re.escape(shape)}"):
            Loader(split, 4, train=False)
    # what the checks accept: a crop pair, a NumPy integer, a 0-d integer array, a float64 mean
    x, _ = next(iter(Loader(tr, np.int64(3), train=True, crop=(16, np.array(12)), mean=small.mean.astype(np.float64),
                            pca=small.pca, workers=np.int32(2))))
    assert x.shape == (3, 3, 16, 12)


def test_loader_refuses_labels_it_would_change(small):
    class Split:
        images = small.train.images

        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(self.labels)

    n = len(small.train)
    with pytest.raises(ValueError, match="split.labels: values .* do not fit in int32"):
        Loader(Split(np.arange(n, dtype=np.int64) + 2**32), 8, train=False)  # was wrapped to 0, 1, ...
    with pytest.raises(TypeError, match="split.labels must be integers, got float32"):
        Loader(Split(np.full(n, 0.7, np.float32)), 8, train=False)  # was truncated to 0
    labels = np.asarray(small.train.labels, np.int64)
    np.testing.assert_array_equal(Loader(Split(labels), 8, train=False).labels, labels)


@pytest.mark.skipif(not convnet.cuda_available(), reason="CUDA: no GPU visible")
def test_loader_cpu_and_gpu_agree(small):
    kw = dict(train=True, crop=16, mean=small.mean, pca=small.pca, seed=9, epoch=3)
    for (xc, yc), (xg, yg) in zip(batches(Loader(small.train, 8, **kw)),
                                  batches(Loader(small.train, 8, device="cuda:0", **kw))):
        assert np.array_equal(xc, xg) and np.array_equal(yc, yg)
