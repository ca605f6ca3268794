"""Prepared images/s of convnet.prepare against a plain Pillow loop on the same JPEG files,
measured in the same run. Standalone:

    python benchmarks/bench_prepare.py [--images 400] [--workers N] [--json FILE]

The files are generated JPEGs with ImageNet-like sizes: most about 500x375 (ImageNet's
typical size), a quarter large (1200-2000 px wide; ImageNet has many photos of that size),
in 10 class folders. The plain loop opens each file, converts to RGB, resizes the shorter side
to 256 (bicubic), crops the central 256x256, and stores it into a shard array saved with
np.save: the same output, one process, no draft mode. Goal: 1.5x.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if list((HERE.parent / "convnet").glob("_C*.so")):
    sys.path.insert(0, str(HERE.parent))

from convnet.data.prepare import prepare  # noqa: E402


def make_jpegs(root, n, seed=0):
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        if rng.random() < 0.25:
            w = int(rng.integers(1200, 2000))
            h = int(w * rng.uniform(0.6, 0.8))
        else:
            w, h = (500, 375) if rng.random() < 0.6 else (375, 500)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # texture, like photos
        folder = root / f"n{i % 10:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(img).save(path, "JPEG", quality=90)
        files.append(path)
    return files


def plain_loop(files, out_file, size=256):
    shard = np.empty((len(files), size, size, 3), np.uint8)
    for k, f in enumerate(files):
        img = Image.open(f).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        shard[k] = np.asarray(img.crop((left, top, left + size, top + size)))
    np.save(out_file, shard)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", type=int, default=None, help="prepare's processes (default: all cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_jpegs(tmp / "src", args.images)
        t0 = time.perf_counter()
        plain_loop(files, tmp / "plain.npy")
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare(tmp / "src", tmp / "prepared", size=256, shard_size=50, workers=args.workers, progress=False)
        t_ours = time.perf_counter() - t0
    res = {"images": args.images, "cores": os.cpu_count(), "workers": args.workers or os.cpu_count(),
           "plain_images_per_s": args.images / t_plain, "prepare_images_per_s": args.images / t_ours,
           "speedup": t_plain / t_ours}
    print(f"plain Pillow loop: {res['plain_images_per_s']:.1f} images/s; convnet.prepare: "
          f"{res['prepare_images_per_s']:.1f} images/s ({res['workers']} workers on {res['cores']} cores): "
          f"{res['speedup']:.2f}x (goal 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
