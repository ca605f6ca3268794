"""Loader: batches of float32 NCHW images and int32 labels, made in background threads.

Per batch, a thread gathers the uint8 images from the (memory-mapped) split, draws the
augmentation in NumPy from a generator seeded by (seed, epoch, batch), and runs the augment
kernel (crop + flip + mean subtraction + PCA lighting + NCHW) on the loader's device; the
kernel and NumPy's gather release the GIL, so threads overlap with training. On a GPU the
images are gathered into pinned (page-locked) host memory, whose copy to the GPU is queued on
the thread's stream without waiting, with the kernel behind it; the thread waits for its stream
once, before handing the batch over, so the batch is ready on any stream. The pinned buffers
come from a cache, and one is reused only after the copy that read it has finished.
"""
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import convnet
from convnet._checks import cast, flag, float32_number, integer

from .augment import augment_batch, batch_rng, center_offsets, draw, lighting_shift

_ORDER_TAG = 0x0DE5


def _finite(a, shape, what):
    """a as a float32 array of finite values (and `shape`, when given): a NaN mean or PCA value
    made every image NaN, without a word."""
    a = cast(np.asarray(a), np.float32, what)
    if shape is not None and a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return a


class Loader:
    """Iterate over (images float32 (B, 3, crop, crop), labels int32 (B,)) convnet.Tensors on `device`.

    train=True: the split is shuffled per epoch from (seed, epoch); each image gets a random
    crop, a random horizontal flip, the mean image subtracted and the PCA lighting shift with
    alpha ~ N(0, lighting) per channel, drawn anew every presentation. train=False: the split's
    order, centre crops, no flip, no lighting. Each step can be turned off: crop=None (whole
    image), flip=False, lighting=0, mean=None. `pca` = (eigval (3,), eigvec (3, 3) columns).

    len(loader) is the number of batches in an epoch. One pass over the loader yields batches
    start_batch .. len-1 of the current epoch, in the same order as an uninterrupted epoch;
    start_batch then returns to 0. set_epoch(e) picks the epoch of the next pass.
    drop_last (default: train) drops a last partial batch. workers threads (default 1 on the
    CPU, min(4, cores) for a GPU) keep up to workers + prefetch batches in flight.
    """

    def __init__(self, split, batch_size, *, train, crop=None, mean=None, pca=None, flip=True, lighting=0.1,
                 device="cpu", seed=0, epoch=0, start_batch=0, drop_last=None, workers=None, prefetch=2):
        # Settings are checked, not converted: int() took a batch of 2.5 as 2 and bool() a train
        # of "False" as True (a shuffled, cropped validation split).
        if split is None or len(split) == 0:
            raise ValueError("Loader: the split is missing or empty")
        self.batch_size = integer(batch_size, "Loader: batch_size", minimum=1)
        self.split, self.train = split, flag(train, "Loader: train")
        labels = np.asarray(split.labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"Loader: split.labels must be integers, got {labels.dtype}")
        self.images, self.labels = split.images, cast(labels, np.int32, "Loader: split.labels")
        shape = tuple(getattr(self.images, "shape", ()))
        if len(shape) != 4 or shape[3] != 3 or np.dtype(getattr(self.images, "dtype", None)) != np.uint8:
            raise TypeError(f"Loader: split.images must be uint8 (N, H, W, 3), got "
                            f"{getattr(self.images, 'dtype', type(self.images).__name__)} {shape}")
        if self.labels.shape != (shape[0],):  # images past the labels were never seen; fewer, an IndexError
            raise ValueError(f"Loader: the split has {shape[0]} images but labels of shape {self.labels.shape}")
        h, w = int(self.images.shape[1]), int(self.images.shape[2])
        self.image_hw = (h, w)
        if crop is None:
            self.crop_hw = (h, w)
        else:
            sides = tuple(crop) if isinstance(crop, (tuple, list)) else (crop, crop)
            if len(sides) != 2:
                raise ValueError(f"Loader: crop must be a side or (height, width), got {crop!r}")
            self.crop_hw = tuple(integer(c, "Loader: crop") for c in sides)
        if not (1 <= self.crop_hw[0] <= h and 1 <= self.crop_hw[1] <= w):
            raise ValueError(f"Loader: crop {self.crop_hw} does not fit in {h}x{w} images")
        self.flip = flag(flip, "Loader: flip") and self.train
        lighting = float32_number(lighting, "Loader: lighting", minimum=0)  # NaN passed "< 0", then "> 0"
        self.lighting = lighting if self.train else 0.0
        if self.lighting > 0:
            if pca is None:
                raise ValueError("Loader: PCA lighting needs pca=(eigval, eigvec) (or lighting=0)")
            if not (isinstance(pca, (tuple, list)) and len(pca) == 2):
                raise ValueError("Loader: pca must be (eigval (3,), eigvec (3, 3))")
            self.eigval = _finite(pca[0], (3,), "Loader: pca eigval")
            self.eigvec = _finite(pca[1], (3, 3), "Loader: pca eigvec")
        self.device = convnet._C.parse_device(device)
        self.mean = None
        if mean is not None:
            m = _finite(mean.numpy() if isinstance(mean, convnet.Tensor) else mean, None, "Loader: mean")
            if m.shape == (3,):  # a per-channel mean
                m = np.broadcast_to(m, (h, w, 3))
            if m.shape != (h, w, 3):
                raise ValueError(f"Loader: mean must have shape {(h, w, 3)} or (3,), got {m.shape}")
            self.mean = convnet.tensor(np.ascontiguousarray(m), self.device)
        # SeedSequence refuses negatives only at the first batch, naming nothing
        self.seed = integer(seed, "Loader: seed", minimum=0)
        self.epoch = integer(epoch, "Loader: epoch", minimum=0)
        self.drop_last = self.train if drop_last is None else flag(drop_last, "Loader: drop_last")
        # On the CPU one thread is enough (the kernel itself runs on every core) and more would
        # compete with the training step's threads; on a GPU, threads overlap gathers and copies.
        default_workers = 1 if self.device == "cpu" else min(4, os.cpu_count() or 1)
        self.workers = default_workers if workers is None else integer(workers, "Loader: workers", minimum=1)
        self.prefetch = integer(prefetch, "Loader: prefetch", minimum=0)
        self.start_batch = 0
        self.set_epoch(self.epoch, start_batch)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch, start_batch=None):
        epoch = integer(epoch, "Loader: epoch", minimum=0)
        if start_batch is not None:
            start_batch = integer(start_batch, "Loader: start_batch")
            if not 0 <= start_batch <= len(self):
                raise ValueError(f"Loader: start_batch {start_batch} outside 0..{len(self)}")
            self.start_batch = start_batch
        self.epoch = epoch

    def order(self, epoch=None):
        """The permutation of the split used in an epoch (the identity when not training)."""
        n = len(self.labels)
        if not self.train:
            return np.arange(n)
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), _ORDER_TAG]))
        return rng.permutation(n)

    def batch_indices(self, batch, epoch=None, order=None):
        """Indices into the split of batch `batch` (sorted: sequential reads from the shards)."""
        order = self.order(epoch) if order is None else order
        return np.sort(order[batch * self.batch_size:(batch + 1) * self.batch_size])

    def draws(self, batch, n, epoch=None):
        """(offsets, flips, rgb_shift or None) for a batch of n images."""
        epoch = self.epoch if epoch is None else epoch
        if not self.train:
            return center_offsets(n, self.image_hw, self.crop_hw), None, None
        offsets, flips, alphas = draw(batch_rng(self.seed, epoch, batch), n, self.image_hw, self.crop_hw,
                                      self.flip, self.lighting)
        shift = lighting_shift(alphas, self.eigval, self.eigvec) if self.lighting > 0 else None
        return offsets, (flips if self.flip else None), shift

    def _make(self, epoch, batch, idx):
        n = len(idx)
        on_gpu = self.device != "cpu"
        host = convnet.empty((n,) + self.image_hw + (3,), "uint8", "cpu", pinned=on_gpu)
        out = host.numpy()
        if isinstance(self.images, np.ndarray):
            np.take(self.images, idx, axis=0, out=out)
        else:
            self.images.take(idx, out=out)
        offsets, flips, shift = self.draws(batch, n, epoch)
        x = augment_batch(host.to(self.device, non_blocking=True) if on_gpu else host, offsets, flips, shift,
                          self.mean, self.crop_hw, device=self.device)
        y = convnet.tensor(self.labels[idx], self.device)
        if on_gpu:
            convnet.synchronize(self.device)  # this thread's stream: the batch is complete
        return x, y

    def __iter__(self):
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0
        order = self.order(epoch)
        batches = iter(range(start, len(self)))
        # The workers' CPU kernels (the augment pass on the CPU) run on their own thread alone: a
        # second OpenMP team made libgomp see more threads than cores and put the training
        # thread's team to sleep between regions (the default run: 1,900 -> 2,190 images/s).
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convnet-loader",
                                  initializer=convnet._C.set_cpu_threads_of_this_thread, initargs=(1,))
        pending = deque()

        def submit():
            b = next(batches, None)
            if b is not None:
                pending.append(pool.submit(self._make, epoch, b, self.batch_indices(b, order=order)))

        try:
            for _ in range(min(self.workers + self.prefetch, len(self) - start)):
                submit()
            while pending:
                batch = pending.popleft().result()
                submit()
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)
