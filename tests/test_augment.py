"""The augment kernel (crop + flip + mean subtraction + PCA lighting + NCHW) against a NumPy
float64 reference, on every device; the augmentation draws; test-time view geometry."""
import numpy as np
import pytest

import convnet
from convnet import ops
from convnet.data import augment as aug


def ref_augment(images, offsets, flips, shift, mean, ch, cw, source=None):
    """out[k, c, i, j] = img[s, y+i, x+j', c] - mean[y+i, x+j', c] + shift[k, c], written with loops
    over the outputs (slow but obvious)."""
    n = len(offsets)
    source = np.arange(n) if source is None else source
    out = np.empty((n, 3, ch, cw))
    for k in range(n):
        y, x = offsets[k]
        crop = images[source[k], y:y + ch, x:x + cw].astype(np.float64)
        if mean is not None:
            crop = crop - mean[y:y + ch, x:x + cw].astype(np.float64)
        if flips is not None and flips[k]:
            crop = crop[:, ::-1]
        if shift is not None:
            crop = crop + shift[k].astype(np.float64)
        out[k] = crop.transpose(2, 0, 1)
    return out


def random_case(rng, b, h, w, ch, cw, with_mean=True, with_flip=True, with_shift=True):
    images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    offsets = np.stack([rng.integers(0, h - ch + 1, b), rng.integers(0, w - cw + 1, b)], 1).astype(np.int32)
    flips = rng.integers(0, 2, b).astype(np.uint8) if with_flip else None
    shift = rng.normal(0, 5, (b, 3)).astype(np.float32) if with_shift else None
    mean = rng.uniform(0, 255, (h, w, 3)).astype(np.float32) if with_mean else None
    return images, offsets, flips, shift, mean


def t(a, device):
    return None if a is None else convnet.tensor(a, device)


@pytest.mark.parametrize("b,h,w,ch,cw", [(1, 8, 8, 8, 8), (3, 13, 11, 7, 5), (5, 20, 17, 16, 16), (2, 9, 31, 1, 30),
                                         (4, 40, 40, 33, 33)])
def test_augment_matches_reference(device, rng, b, h, w, ch, cw):
    images, offsets, flips, shift, mean = random_case(rng, b, h, w, ch, cw)
    flips[0] = 1  # at least one reflected crop
    out = ops.augment(t(images, device), t(offsets, device), t(flips, device), t(shift, device), t(mean, device),
                      (ch, cw)).numpy()
    assert out.shape == (b, 3, ch, cw) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_augment(images, offsets, flips, shift, mean, ch, cw), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("parts", [(False, False, False), (True, False, False), (False, True, False),
                                   (False, False, True)])
def test_augment_each_step_optional(device, rng, parts):
    with_mean, with_flip, with_shift = parts
    images, offsets, flips, shift, mean = random_case(rng, 3, 12, 10, 6, 7, with_mean, with_flip, with_shift)
    out = ops.augment(t(images, device), t(offsets, device), t(flips, device), t(shift, device), t(mean, device),
                      (6, 7)).numpy()
    np.testing.assert_allclose(out, ref_augment(images, offsets, flips, shift, mean, 6, 7), rtol=1e-6, atol=1e-4)
    if not any(parts):  # a plain crop is exact
        assert np.array_equal(out, ref_augment(images, offsets, None, None, None, 6, 7))


def test_augment_full_image_and_source(device, rng):
    images, _, flips, shift, mean = random_case(rng, 3, 7, 9, 7, 9)
    source = np.array([2, 0, 2, 1, 1, 0, 2], np.int32)
    n = len(source)
    offsets = np.zeros((n, 2), np.int32)
    flips = rng.integers(0, 2, n).astype(np.uint8)
    shift = rng.normal(0, 3, (n, 3)).astype(np.float32)
    out = ops.augment(t(images, device), t(offsets, device), t(flips, device), t(shift, device), t(mean, device),
                      None, t(source, device)).numpy()
    np.testing.assert_allclose(out, ref_augment(images, offsets, flips, shift, mean, 7, 9, source),
                               rtol=1e-6, atol=1e-4)


def test_augment_empty_batch(device):
    out = ops.augment(convnet.zeros((0, 8, 8, 3), "uint8", device), convnet.zeros((0, 2), "int32", device), crop=4)
    assert out.shape == (0, 3, 4, 4)


@pytest.mark.skipif(not convnet.cuda_available(), reason="CUDA: no GPU visible")
def test_augment_cpu_and_gpu_twins_agree(rng):
    images, offsets, flips, shift, mean = random_case(rng, 6, 64, 60, 48, 52)
    args = (images, offsets, flips, shift, mean)
    cpu = ops.augment(*[t(a, "cpu") for a in args], (48, 52)).numpy()
    gpu = ops.augment(*[t(a, "cuda:0") for a in args], (48, 52)).numpy()
    assert np.array_equal(cpu, gpu)  # the same float operations in the same order


def test_augment_bad_input(device, rng):
    images, offsets, flips, shift, mean = random_case(rng, 2, 10, 12, 8, 8)
    T = lambda a: t(a, device)  # noqa: E731

    def call(images=images, offsets=offsets, flips=flips, shift=shift, mean=mean, crop=(8, 8), source=None):
        return ops.augment(T(images), T(offsets), T(flips), T(shift), T(mean), crop, T(source))

    call()
    with pytest.raises(ValueError, match=r"augment: offsets\[1\]"):
        call(offsets=np.array([[0, 0], [3, 0]], np.int32))  # 3 + 8 > 10 rows
    with pytest.raises(ValueError, match=r"augment: offsets\[0\]"):
        call(offsets=np.array([[0, -1], [0, 0]], np.int32))
    with pytest.raises(ValueError, match=r"augment: offsets\[0\]"):
        call(offsets=np.array([[0, 5], [0, 0]], np.int32))  # 5 + 8 > 12 columns
    with pytest.raises(ValueError, match="augment: crop"):
        call(crop=(11, 8))
    with pytest.raises(ValueError, match="augment: crop"):
        call(crop=(0, 8))
    with pytest.raises(TypeError, match="augment: 'images' must be uint8"):
        call(images=images.astype(np.float32))
    with pytest.raises(ValueError, match="augment: 'images'"):
        call(images=images[..., :2].copy())
    for crop in (None, (8, 8)):  # the whole image by default: a wrong rank still names the op
        with pytest.raises(ValueError, match="augment: 'images'"):
            call(images=images[:, 0, 0].copy(), crop=crop)
    with pytest.raises(TypeError, match="augment: 'offsets' must be int32"):
        call(offsets=offsets.astype(np.float32))
    with pytest.raises(ValueError, match="augment: 'offsets' must have shape"):
        call(offsets=offsets[:1].copy())
    with pytest.raises(ValueError, match="augment: 'flips' must have shape"):
        call(flips=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="augment: 'rgb_shift' must have shape"):
        call(shift=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="augment: 'mean' must have shape"):
        call(mean=np.zeros((12, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"augment: source\[1\]"):
        call(source=np.array([0, 2], np.int32))
    if device != "cpu":
        with pytest.raises(ValueError, match="augment: 'images' is on"):
            ops.augment(T(images), t(offsets, "cpu"), crop=8)


def test_draws_deterministic_and_distributed():
    a = aug.draw(aug.batch_rng(3, 1, 7), 4000, (256, 256), (224, 224), True, 0.1)
    b = aug.draw(aug.batch_rng(3, 1, 7), 4000, (256, 256), (224, 224), True, 0.1)
    c = aug.draw(aug.batch_rng(3, 2, 7), 4000, (256, 256), (224, 224), True, 0.1)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    offsets, flips, alphas = a
    assert offsets.min() == 0 and offsets.max() == 32  # every position 0..256-224 reachable
    assert 0.45 < flips.mean() < 0.55
    assert abs(alphas.std() - 0.1) < 0.005 and abs(alphas.mean()) < 0.005
    # Turning a step off leaves the other draws alone.
    o2, f2, a2 = aug.draw(aug.batch_rng(3, 1, 7), 4000, (256, 256), (224, 224), False, 0.0)
    assert np.array_equal(o2, offsets) and not f2.any() and not a2.any()


def test_lighting_shift_is_the_papers_formula(rng):
    eigvec = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    eigval = np.array([55.0, 4.8, 1.1])
    alphas = rng.normal(0, 0.1, (5, 3))
    shift = aug.lighting_shift(alphas, eigval, eigvec)
    for k in range(5):  # [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
        want = sum(eigvec[:, i] * alphas[k, i] * eigval[i] for i in range(3))
        np.testing.assert_allclose(shift[k], want, rtol=1e-5, atol=1e-5)


def test_ten_view_geometry(device, rng):
    b, h, w, c = 2, 12, 10, 7
    images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    v = aug.views(images, c, "ten")
    assert len(v.source) == 10 * b and list(v.source) == [0] * 10 + [1] * 10
    corners = {(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)}
    for k in range(b):
        offs = [tuple(o) for o in v.offsets[10 * k:10 * k + 10]]
        assert set(offs[:5]) == corners and offs[5:] == offs[:5]
        assert list(v.flips[10 * k:10 * k + 10]) == [0] * 5 + [1] * 5
    out, _ = aug.view_batch(images, c, "ten", device=device)
    out = out.numpy()
    assert out.shape == (10 * b, 3, c, c)
    # View 5+i is the mirror image of view i; view 0 is the centre crop; views 1..4 the corners.
    np.testing.assert_array_equal(out[5:10], out[0:5, :, :, ::-1])
    y, x = (h - c) // 2, (w - c) // 2
    np.testing.assert_array_equal(out[10], images[1, y:y + c, x:x + c].transpose(2, 0, 1))
    np.testing.assert_array_equal(out[14], images[1, h - c:, w - c:].transpose(2, 0, 1))
    centre, v1 = aug.view_batch(images, c, "center", mean=np.full((h, w, 3), 1.0, np.float32), device=device)
    np.testing.assert_array_equal(centre.numpy(), out[[0, 10]] - 1.0)
    with pytest.raises(ValueError, match="views: mode"):
        aug.views(images, c, "corners")
    with pytest.raises(ValueError, match="views: crop"):
        aug.views(images, 11, "ten")
