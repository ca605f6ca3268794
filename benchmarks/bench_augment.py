"""Data augmentation: the augment kernel on the paper's shapes (256x256 images -> 224x224
crops, flipped, mean image subtracted, PCA lighting) and the Loader's images/s end to end
(gather from a split held in memory, draws, kernel, labels; background threads). Compare the
loader row with the training step's images/s (family "step"): the goal is twice the step's rate."""
import itertools

import numpy as np

import convnet
from convnet import ops
from convnet.data import Loader, Split

SIZE, CROP = 256, 224


def _numpy_augment(images, offsets, flips, shift, mean):
    out = np.empty((len(images), 3, CROP, CROP), np.float32)
    for k, (y, x) in enumerate(offsets):
        crop = images[k, y:y + CROP, x:x + CROP].astype(np.float32) - mean[y:y + CROP, x:x + CROP]
        if flips[k]:
            crop = crop[:, ::-1]
        out[k] = (crop + shift[k]).transpose(2, 0, 1)
    return out


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    offsets = rng.integers(0, SIZE - CROP + 1, (n, 2)).astype(np.int32)
    flips = rng.integers(0, 2, n).astype(np.uint8)
    shift = rng.normal(0, 5, (n, 3)).astype(np.float32)
    mean = rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    args = [convnet.tensor(a, dev) for a in (images, offsets, flips, shift, mean)]
    out = []
    case = {"name": f"augment {SIZE}->{CROP}", "ours": lambda: ops.augment(*args, crop=CROP), "items": n,
            "bytes": n * CROP * CROP * 3 * (1 + 4 + 4),  # uint8 read, mean read, float32 write
            "numpy": lambda: _numpy_augment(images, offsets, flips, shift, mean)}
    if torch is not None:
        td = ctx["torch_device"]
        ti, tm = torch.from_numpy(images).to(td), torch.from_numpy(mean).to(td)
        ts = torch.from_numpy(shift).to(td)

        def torch_augment():
            crops = []
            for k, (y, x) in enumerate(offsets):
                c = ti[k, y:y + CROP, x:x + CROP].float() - tm[y:y + CROP, x:x + CROP]
                if flips[k]:
                    c = c.flip(1)
                crops.append((c + ts[k]).permute(2, 0, 1))
            return torch.stack(crops)
        case["torch"] = torch_augment
    out.append(case)

    # The loader end to end, from a split in memory: one call is a whole epoch of 4 batches,
    # pipeline start-up included (a conservative images/s).
    pool = rng.integers(0, 256, (4 * n, SIZE, SIZE, 3), dtype=np.uint8)
    split = Split("bench", pool, rng.integers(0, 1000, 4 * n).astype(np.int32))
    eigvec = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    loader = Loader(split, n, train=True, crop=CROP, mean=mean, pca=(np.array([55.0, 4.8, 1.1]), eigvec),
                    device=dev, seed=0)
    epochs = itertools.count()

    def one_epoch():
        loader.set_epoch(next(epochs))
        for _ in loader:
            pass

    out.append({"name": f"loader {SIZE}->{CROP}", "ours": one_epoch, "items": 4 * n})
    return out
