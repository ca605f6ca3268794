"""The random draws of training augmentation and the geometry of test-time views.

All randomness is drawn here, in NumPy, from a generator seeded by (seed, epoch, batch):
the same draws whatever the number of loader threads and whether the augment kernel
(convnet.ops.augment, csrc/*/augment.*) then runs on the CPU or a GPU.
"""
from collections import namedtuple

import numpy as np

import convnet
from convnet import ops

_DRAW_TAG = 0xA0612  # separates the augmentation stream from other users of the same seed


def batch_rng(seed, epoch, batch):
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(batch), _DRAW_TAG]))


def draw(rng, n, image_hw, crop_hw, flip=True, lighting=0.1):
    """(offsets int32 (n, 2) as (y, x), flips uint8 (n,), alphas float32 (n, 3)) for n images.

    Offsets are uniform over every position of the crop inside the image, flips are fair
    coins, alphas ~ N(0, lighting). Everything is always drawn (then zeroed when disabled), so
    turning one step off leaves the draws of the others unchanged."""
    (h, w), (ch, cw) = image_hw, crop_hw
    y = rng.integers(0, h - ch + 1, n)
    x = rng.integers(0, w - cw + 1, n)
    flips = rng.random(n) < 0.5
    alphas = rng.standard_normal((n, 3))
    offsets = np.stack([y, x], axis=1).astype(np.int32)
    flips = (flips & bool(flip)).astype(np.uint8)
    alphas = (alphas * float(lighting)).astype(np.float32)
    return offsets, flips, alphas


def lighting_shift(alphas, eigval, eigvec):
    """The paper's PCA lighting term per image: [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T, as rows (n, 3)."""
    alphas = np.asarray(alphas, np.float64).reshape(-1, 3)
    return ((alphas * np.asarray(eigval, np.float64)) @ np.asarray(eigvec, np.float64).T).astype(np.float32)


def center_offsets(n, image_hw, crop_hw):
    (h, w), (ch, cw) = image_hw, crop_hw
    return np.tile(np.array([[(h - ch) // 2, (w - cw) // 2]], np.int32), (n, 1))


Views = namedtuple("Views", ["source", "offsets", "flips"])
Views.__doc__ = """Test-time views: output k is image source[k] cropped at offsets[k] = (y, x), flipped when flips[k]."""

TEN_VIEWS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")


def views(images, crop, mode="center"):
    """The test-time views of a batch of images (B, H, W, 3) (an array, Tensor or just a shape).

    mode "center": B views, the central crop of each image.
    mode "ten": 10*B views: for image b, views 10*b .. 10*b+9 are the centre, top-left,
    top-right, bottom-left and bottom-right crops, then the same five horizontally reflected
    (the paper's ten patches). Average a per-view result r (10*B, ...) with r.reshape(B, 10, ...).mean(1).
    """
    b, h, w = (int(s) for s in tuple(getattr(images, "shape", images))[:3])
    ch, cw = (crop, crop) if np.isscalar(crop) else (int(crop[0]), int(crop[1]))
    if not (1 <= ch <= h and 1 <= cw <= w):
        raise ValueError(f"views: crop {ch}x{cw} does not fit in {h}x{w} images")
    if mode == "center":
        return Views(np.arange(b, dtype=np.int32), center_offsets(b, (h, w), (ch, cw)), np.zeros(b, np.uint8))
    if mode != "ten":
        raise ValueError(f"views: mode must be 'center' or 'ten', got {mode!r}")
    five = np.array([[(h - ch) // 2, (w - cw) // 2], [0, 0], [0, w - cw], [h - ch, 0], [h - ch, w - cw]], np.int32)
    offsets = np.tile(np.concatenate([five, five]), (b, 1))
    flips = np.tile(np.repeat(np.array([0, 1], np.uint8), 5), b)
    source = np.repeat(np.arange(b, dtype=np.int32), 10)
    return Views(source, offsets, flips)


def _on(x, device, dtype=None):
    if x is None or (isinstance(x, convnet.Tensor) and x.device == convnet._C.parse_device(device)):
        return x
    if isinstance(x, convnet.Tensor):
        return x.to(device)
    return convnet.tensor(np.ascontiguousarray(x, dtype=dtype), device)


def augment_batch(images, offsets, flips=None, rgb_shift=None, mean=None, crop=None, source=None, device=None):
    """convnet.ops.augment on NumPy or Tensor inputs, moving them to `device` (default: that of
    `images` when it is a Tensor, else the CPU). Returns float32 (N, 3, crop_h, crop_w)."""
    if device is None:
        device = images.device if isinstance(images, convnet.Tensor) else "cpu"
    return ops.augment(_on(images, device, np.uint8), _on(offsets, device, np.int32), _on(flips, device, np.uint8),
                       _on(rgb_shift, device, np.float32), _on(mean, device, np.float32), crop,
                       _on(source, device, np.int32))


def view_batch(images, crop, mode="center", mean=None, device=None):
    """(float32 (V, 3, crop, crop) Tensor, Views): the test-time views of images (B, H, W, 3)
    uint8 with the mean image subtracted (mean None: nothing subtracted)."""
    v = views(images, crop, mode)
    out = augment_batch(images, v.offsets, v.flips, None, mean, crop, v.source if mode != "center" else None,
                        device)
    return out, v
