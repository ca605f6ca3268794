"""The Tensor type, devices, copies and DLPack."""
import os
import threading

import numpy as np
import pytest

import convnet
from convnet import _C


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
def test_roundtrip(device, rng, dtype):
    a = (rng.standard_normal((2, 3, 5)) * 50).astype(dtype)
    t = convnet.tensor(a, device)
    assert t.shape == (2, 3, 5) and t.dtype == np.dtype(dtype).name and t.device == device
    assert t.ndim == 3 and t.size == 30 and len(t) == 2
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal(t.to("cpu").numpy(), a)
    np.testing.assert_array_equal(t.clone().numpy(), a)


def test_default_dtype_conversion():
    assert convnet.tensor(np.zeros(3)).dtype == "float32"
    assert convnet.tensor(np.arange(3)).dtype == "int32"
    assert convnet.tensor([True, False]).dtype == "uint8"
    assert convnet.tensor([[1.5, 2.5]]).shape == (1, 2)
    with pytest.raises(TypeError, match="unsupported dtype"):
        convnet.tensor(np.array(["a"]))
    with pytest.raises(TypeError, match="unsupported dtype"):
        convnet.tensor(np.zeros(2), dtype="float16")
    # a 0-d array stays 0-d (np.ascontiguousarray made it shape (1,))
    assert convnet.tensor(np.float32(3)).shape == () and convnet.tensor(np.array(7)).shape == ()
    assert convnet.tensor(np.float32(3)).numpy().shape == ()


def test_conversions_refuse_what_is_not_a_real_number():
    # with dtype= these went straight to astype: 1+2j -> 1, "1.5" -> 1.5, a date -> its day count
    for data in (np.array([1 + 2j]), np.array(["1.5"]), np.array([1.5], dtype=object),
                 np.array(["2020-01-01"], dtype="datetime64[D]")):
        for dtype in (None, "float32", "int32"):
            with pytest.raises(TypeError, match="unsupported dtype"):
                convnet.tensor(data, dtype=dtype)
    # finite values past float32's range became inf, with a NumPy warning only
    for big in (np.array([1.0, -1e39]), np.array([3.5e38], np.longdouble)):
        with pytest.raises(ValueError, match="is past float32's range"):
            convnet.tensor(big)
    edge = np.array([3.4028234e38, -np.inf, np.nan, 1e-50])  # the largest float32, and what stays itself
    np.testing.assert_array_equal(convnet.tensor(edge).numpy(), edge.astype(np.float32))
    for device in (None, 3, b"cpu"):
        with pytest.raises(TypeError, match="tensor: device must be a string"):
            convnet.tensor(np.zeros(2), device)


def test_integer_conversions_keep_every_value():
    # astype wrapped these silently: int64 2**32 + 3 became label 3, -1 became uint8 255, NaN -2**31
    for data, kw in [(np.array([0, 2**32 + 3]), {}), (np.array([2**32 - 1], np.uint32), {}),
                     (np.array([2**63], np.uint64), {}), (np.array([-1, 3]), dict(dtype="uint8")),
                     (np.array([300]), dict(dtype="uint8")), (np.array([1.0, np.nan]), dict(dtype="int32")),
                     (np.array([3e9]), dict(dtype="int32"))]:
        with pytest.raises(ValueError, match="do not fit in"):
            convnet.tensor(data, **kw)
    edge = np.array([-2**31, 2**31 - 1], np.int64)
    np.testing.assert_array_equal(convnet.tensor(edge).numpy(), edge)
    np.testing.assert_array_equal(convnet.tensor(np.array([0, 255]), dtype="uint8").numpy(), [0, 255])
    np.testing.assert_array_equal(convnet.tensor(np.array([1.5, -2.0]), dtype="int32").numpy(), [1, -2])
    assert convnet.tensor(np.zeros(0, np.int64)).shape == (0,)


def test_empty_and_zeros(device):
    z = convnet.zeros((4, 5), "int32", device)
    np.testing.assert_array_equal(z.numpy(), np.zeros((4, 5), np.int32))
    e = convnet.empty((0, 3), "float32", device)
    assert e.shape == (0, 3) and e.numpy().shape == (0, 3)
    # tests run with poisoning on: fresh float tensors read as NaN
    assert np.isnan(convnet.empty((7,), "float32", device).numpy()).all()


def test_shapes_given_as_an_int_or_a_sequence(device):
    assert convnet.zeros(3, "int32", device).shape == (3,)  # was: 'int' object is not iterable
    assert convnet.empty([2, np.int64(3)], "float32", device).shape == (2, 3)
    for bad in ((True, 2), (2.0, 3), "23"):
        with pytest.raises(TypeError, match="shape .* must be an integer"):
            convnet.empty(bad, "float32", device)


def test_shapes_out_of_range_are_refused(device):
    # a byte count that wrapped around would allocate a few bytes for a huge tensor
    for shape in [(1 << 62,), (1 << 31, 1 << 31), (1 << 40, 1 << 40), (3, 1 << 61)]:
        with pytest.raises(ValueError, match="too large"):
            convnet.empty(shape, "float32", device)
        with pytest.raises(ValueError, match="too large"):
            convnet.zeros(shape, "int32", device)
    with pytest.raises(ValueError, match="negative dimension"):
        convnet.empty((2, -3), "float32", device)
    for shape in [(0, 1 << 62), (1 << 62, 0), (0, 1 << 40, 1 << 40)]:  # (0, 2^62) was taken, (2^62, 0) not
        with pytest.raises(ValueError, match="too large"):
            convnet.empty(shape, "float32", device)
    assert convnet.empty((0, 1 << 40), "float32", device).shape == (0, 1 << 40)
    t = convnet.tensor(np.arange(4, dtype=np.float32), device)
    with pytest.raises(ValueError, match="too large"):
        t.reshape([1 << 62, 4])  # (2^64 elements: the count alone would wrap to 0)
    np.testing.assert_array_equal(t.reshape([2, 2]).numpy(), np.arange(4).reshape(2, 2))


def test_copy_and_reshape(device, rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    t = convnet.tensor(a, device)
    dst = convnet.empty((3, 4), "float32", device)
    dst.copy_(convnet.tensor(a))  # from the CPU, whatever dst's device
    np.testing.assert_array_equal(dst.numpy(), a)
    np.testing.assert_array_equal(t.reshape([4, -1]).numpy(), a.reshape(4, 3))
    with pytest.raises(ValueError, match="cannot reshape"):
        t.reshape([5, 3])
    with pytest.raises(ValueError, match="different shape"):
        dst.copy_(convnet.tensor(np.zeros((4, 3), np.float32)))


def test_python_protocols(device, rng):
    a = rng.standard_normal((2, 5)).astype(np.float32)
    t = convnet.tensor(a, device)
    for made in (lambda: convnet.Tensor(), lambda: convnet.Tensor.__new__(convnet.Tensor)):
        # __new__ made an object without a C++ tensor, and the first method called on it crashed
        with pytest.raises(TypeError, match="tensors are made by convnet.tensor"):
            made()
    import copy
    import pickle
    for c in (copy.copy(t), copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert c.device == device and c.data_ptr() != t.data_ptr()
        np.testing.assert_array_equal(c.numpy(), a)
    # np.asarray(t) was a 0-d object array; a CPU tensor is viewed, a GPU one copied
    view = np.asarray(t)
    assert view.dtype == np.float32 and np.array_equal(view, a)
    assert np.shares_memory(view, t.numpy()) == (device == "cpu")
    assert not np.shares_memory(np.array(t, copy=True), t.numpy())
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    if device != "cpu":
        with pytest.raises(ValueError, match="without a copy"):
            np.asarray(t, copy=False)
    np.testing.assert_array_equal(np.asarray([t, t]), [a, a])


def test_copy_between_overlapping_views():
    base = np.arange(12, dtype=np.float32)
    a, b = convnet.from_dlpack(base[0:6]), convnet.from_dlpack(base[3:9])
    with pytest.raises(ValueError, match="copy_: 'self' and 'src' share memory"):
        a.copy_(b)  # was a memcpy between overlapping ranges: undefined
    np.testing.assert_array_equal(base, np.arange(12))
    a.copy_(a)
    a.copy_(convnet.from_dlpack(base[6:12]))  # next to each other, not overlapping
    np.testing.assert_array_equal(base, np.r_[np.arange(6, 12), np.arange(6, 12)])


def test_device_names():
    assert _C.parse_device("cpu") == "cpu"
    assert _C.parse_device("cpu:1") == "cpu"
    for bad in ["gpu", "cuda:x", "cpu:", "tpu:0", ""]:
        with pytest.raises(ValueError, match="device"):
            convnet.tensor(np.zeros(2), bad)
    n = convnet.device_count()
    with pytest.raises(RuntimeError, match="cuda"):
        convnet.tensor(np.zeros(2), f"cuda:{n}")


def test_numpy_view_shares_memory_on_cpu(rng):
    t = convnet.tensor(rng.standard_normal(4).astype(np.float32))
    v = t.numpy()
    v[0] = 42.0
    assert t.numpy()[0] == 42.0
    del t
    assert v[0] == 42.0  # the view keeps the storage alive


def test_large_host_blocks_are_cached(rng):
    # Blocks of 1 MiB and more go back to a cache when their tensor dies and are handed out again
    # (csrc/core/host_memory.cpp); a view still held keeps its block out of the cache.
    a = rng.standard_normal(3 * 2**18 + 5).astype(np.float32)  # 3 MiB and a bit
    x = convnet.tensor(a)
    _C.empty_cache()
    assert _C.host_memory_cached() == 0
    convnet.ops.relu(x)  # its output dies at once: the block is cached
    cached = _C.host_memory_cached()
    assert a.nbytes <= cached < a.nbytes + 2**17
    kept = convnet.ops.relu(x).numpy()  # takes the cached block, held by the view
    assert _C.host_memory_cached() == 0
    for sign in (-1.0, 1.0, -1.0):  # an input and an output block a time (poisoned, then written in full)
        y = convnet.ops.relu(convnet.tensor(sign * a))
        np.testing.assert_array_equal(y.numpy(), np.maximum(sign * a, 0))
        del y
    assert _C.host_memory_cached() == 2 * cached  # the same two blocks each time, not six
    np.testing.assert_array_equal(kept, np.maximum(a, 0))  # never handed out while viewed
    del kept
    assert _C.host_memory_cached() == 3 * cached
    small = convnet.ops.relu(convnet.tensor(a[:1000]))  # small blocks are not cached
    del small
    assert _C.host_memory_cached() == 3 * cached
    _C.empty_cache()
    assert _C.host_memory_cached() == 0


def test_dlpack_numpy_both_ways(device, rng):
    a = rng.standard_normal((3, 7)).astype(np.float32)
    t = convnet.from_dlpack(a)  # zero copy
    assert t.data_ptr() == a.ctypes.data
    np.testing.assert_array_equal(t.numpy(), a)
    back = np.from_dlpack(convnet.tensor(a))
    np.testing.assert_array_equal(back, a)
    with pytest.raises(ValueError, match="not contiguous"):
        convnet.from_dlpack(np.asfortranarray(a))
    with pytest.raises(TypeError, match="dtype"):
        convnet.from_dlpack(a.astype(np.float64))
    with pytest.raises(TypeError, match="DLPack"):
        convnet.from_dlpack([1, 2])
    assert convnet.tensor(a, device).__dlpack_device__()[0] == (1 if device == "cpu" else 2)


def test_dlpack_versions_copy_and_device():
    a = np.arange(6, dtype=np.float32)
    t = convnet.tensor(a)
    assert '"dltensor"' in repr(t.__dlpack__())  # consumers that ask for nothing: DLPack 0.8
    assert '"dltensor_versioned"' in repr(t.__dlpack__(max_version=(1, 0)))
    # NumPy asks for 1.0: a writable view (the unversioned capsule gave a read-only one), which
    # comes back in again without a copy
    back = np.from_dlpack(t)
    assert back.flags.writeable and back.ctypes.data == t.data_ptr()
    back[0] = 42
    assert t.numpy()[0] == 42
    assert convnet.from_dlpack(back).data_ptr() == t.data_ptr()
    # copy=True: a copy (flagged as such); copy=False: never one
    copied = np.from_dlpack(t, copy=True)
    copied[1] = -1
    assert t.numpy()[1] == 1 and copied.ctypes.data != t.data_ptr()
    assert np.from_dlpack(t, copy=False).ctypes.data == t.data_ptr()
    # dl_device: this tensor's own device only
    assert '"dltensor"' in repr(t.__dlpack__(dl_device=(1, 0)))
    with pytest.raises(BufferError, match="__dlpack__: this tensor is on cpu .* to DLPack device \\(2, 0\\)"):
        t.__dlpack__(dl_device=(2, 0))
    # were pybind11's "Unable to cast Python instance of type ... to C++ type '?'"
    for kw, match in [(dict(max_version=(1,)), "max_version must be a \\(major, minor\\) tuple, got \\(1,\\)"),
                      (dict(max_version="1.0"), "max_version must be"), (dict(dl_device=1), "dl_device must be"),
                      (dict(copy="no"), "copy must be True, False or None, got 'no'"), (dict(copy=1), "copy must be")]:
        with pytest.raises(TypeError, match="__dlpack__: " + match):
            t.__dlpack__(**kw)
    # a float32 array that starts one byte into a buffer: on a GPU its loads would fault
    odd = np.ndarray((3,), np.float32, buffer=bytearray(13), offset=1)
    with pytest.raises(ValueError, match="from_dlpack: the array's data is not aligned to its 4-byte elements"):
        convnet.from_dlpack(odd)
    np.testing.assert_array_equal(convnet.tensor(odd).numpy(), odd)
    # a read-only array cannot become a writable tensor without a copy: refused, saying so
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="from_dlpack: the array is read-only"):
        convnet.from_dlpack(ro)
    np.testing.assert_array_equal(convnet.tensor(ro).numpy(), ro)

    class Legacy:  # a producer from before DLPack 1.0: no max_version
        def __dlpack__(self, stream=None):
            return t.__dlpack__()

        def __dlpack_device__(self):
            return t.__dlpack_device__()

    assert convnet.from_dlpack(Legacy()).data_ptr() == t.data_ptr()

    class NoDevice:
        def __dlpack__(self, stream=None):
            return t.__dlpack__()

    with pytest.raises(TypeError, match="from_dlpack: NoDevice does not support the DLPack protocol"):
        convnet.from_dlpack(NoDevice())


def test_dlpack_capsule_dying_during_an_exception():
    # A consumed capsule's destructor cleared the pending exception; freed while the exception
    # unwound (CPython pops its stack with the error set), that crashed the interpreter.
    code = """
import numpy as np
import convnet
from convnet import _C
def consume(cap):
    _C.from_dlpack_capsule(cap)
    return cap
def two(a, b):
    pass
for versioned in (False, True):
    t = convnet.tensor(np.ones(3, np.float32))
    caps = [t.__dlpack__(max_version=(1, 0)) if versioned else t.__dlpack__()]
    try:
        two(consume(caps.pop()), 1 / 0)
    except ZeroDivisionError:
        print("caught", versioned)
"""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["caught", "False", "caught", "True"], out


def test_dlpack_empty_arrays_with_any_strides():
    # no elements, no layout: NumPy gives an empty (3, 0) array strides (0, 0), PyTorch (1, 1);
    # both used to be refused as "not contiguous", which no contiguous copy could fix
    for a in [np.empty((3, 0), np.float32), np.empty((2, 0, 4), np.float32), np.empty((0, 5), np.float32)]:
        assert convnet.from_dlpack(a).shape == a.shape
    torch = pytest.importorskip("torch")
    for t in [torch.empty(3, 0), torch.empty(2, 0, 4), torch.zeros(0, 3).t()]:
        assert convnet.from_dlpack(t).shape == tuple(t.shape)


def test_dlpack_torch(device, rng):
    torch = pytest.importorskip("torch")
    if device != "cpu" and not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    a = rng.standard_normal((2, 5)).astype(np.float32)
    tt = torch.from_numpy(a).to(device)
    ours = convnet.from_dlpack(tt)
    assert ours.device == device and ours.data_ptr() == tt.data_ptr()
    y = convnet.ops.relu(ours)
    back = torch.from_dlpack(y)
    assert back.device.type == ("cpu" if device == "cpu" else "cuda")
    np.testing.assert_array_equal(back.cpu().numpy(), np.maximum(a, 0))


@pytest.mark.skipif(not convnet.cuda_available(), reason="CUDA: no GPU visible or no CUDA build")
def test_gpu_to_gpu_copy_and_allocator(rng):
    a = rng.standard_normal((64, 33)).astype(np.float32)
    n = convnet.device_count()
    t = convnet.tensor(a, "cuda:0")
    other = f"cuda:{n - 1}"
    np.testing.assert_array_equal(t.to(other).to("cuda:0").numpy(), a)
    before = _C.memory_allocated(0)
    for _ in range(10):  # same-size allocations hit the cache
        convnet.ops.relu(t)
    assert _C.memory_allocated(0) == before
    if os.environ.get("CONVNET_NO_MEMORY_CACHING") != "1":
        assert _C.memory_cached(0) > 0
    assert isinstance(_C.cuda_device_name(0), str)


def test_check_finite(device):
    t = convnet.tensor(np.array([1.0, np.nan, np.inf, 2.0], np.float32), device)
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        _C.check_finite(t, "t")
    _C.check_finite(convnet.tensor(np.ones(5, np.float32), device), "ok")


def test_checkout_sources_use_the_installed_build(tmp_path):
    """`python -m convnet.train` from a checkout after `pip install .` imports the checkout's
    sources, which have no compiled module: they must use the installed build's."""
    import shutil
    import subprocess
    import sys

    real = os.path.dirname(os.path.abspath(convnet.__file__))
    src = tmp_path / "convnet"
    shutil.copytree(real, src, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = "import convnet; print(convnet._C.__file__); print(convnet.ops.relu(convnet.tensor([-1.0, 2.0])).numpy())"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(real))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert os.path.dirname(lines[0]) == real and lines[1] == "[0. 2.]"


needs_gpu = pytest.mark.skipif(not convnet.cuda_available(), reason="CUDA: no GPU visible or no CUDA build")


@needs_gpu
@pytest.mark.parametrize("path", ["peer", "staged", "automatic"])
def test_gpu_to_gpu_copy_paths(rng, path):
    # Both paths of a GPU-to-GPU copy, forced, so that one physical GPU runs them too.
    for shape, dtype in [((3, 5, 7), np.float32), ((1,), np.int32), ((4097,), np.uint8)]:
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        src = convnet.tensor(a, "cuda:0")
        dst = convnet.tensor(np.zeros(shape, dtype) + 7, f"cuda:{convnet.device_count() - 1}")
        _C._copy_between_gpus(dst, src, path)
        np.testing.assert_array_equal(dst.numpy(), a)
    with pytest.raises(ValueError, match="path must be"):
        _C._copy_between_gpus(dst, dst, "sideways")
    with pytest.raises(ValueError, match="both tensors must be on GPUs"):
        _C._copy_between_gpus(convnet.tensor(a), src, "peer")


@needs_gpu
def test_pinned_async_copy_is_ordered_before_reuse(rng):
    # A pinned block freed right after an asynchronous copy is handed out again only once the
    # copy has read it: the new owner's writes must not reach the copy already queued.
    shape = (64, 256, 256, 3)  # a large copy, so that it is still in flight when the block is reused
    outs, expected = [], []
    for i in range(4):
        host = convnet.empty(shape, "uint8", "cpu", pinned=True)
        assert host.is_pinned and host.device == "cpu"
        view = host.numpy()
        view[...] = i + 1
        view[0, 0, 0, :] = [i, 2 * i, 3 * i]
        expected.append(view.copy())
        outs.append(host.to("cuda:0", non_blocking=True))
        del host, view  # back to the cache with its copy possibly still running
    convnet.synchronize("cuda:0")
    for o, e in zip(outs, expected):
        np.testing.assert_array_equal(o.numpy(), e)
    # A non-pinned tensor's non_blocking copy is an ordinary synchronous one.
    a = rng.integers(0, 255, (5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(convnet.tensor(a).to("cuda:0", non_blocking=True).numpy(), a)


@needs_gpu
def test_pinned_copies_from_two_threads(rng):
    # Two threads queueing copies of one pinned tensor: each copy waits on the last one's event,
    # which only one of them may then destroy (a lock; without it, a double destroy).
    a = rng.integers(0, 255, (64, 1024), dtype=np.uint8)
    host = convnet.empty(a.shape, "uint8", "cpu", pinned=True)
    host.numpy()[...] = a
    devices = ["cuda:0", f"cuda:{convnet.device_count() - 1}"]
    outs = [[], []]

    def copy(k):
        for i in range(2000):
            out = host.to(devices[k], non_blocking=True)
            if i % 200 == 0:
                outs[k].append(out)

    threads = [threading.Thread(target=copy, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        convnet.synchronize(devices[k])
        assert len(outs[k]) == 10
        for o in outs[k]:
            np.testing.assert_array_equal(o.numpy(), a)


def test_pinned_memory_errors():
    if not convnet.cuda_available():
        with pytest.raises(RuntimeError, match="pinned host memory needs a CUDA GPU"):
            convnet.empty((4,), "uint8", "cpu", pinned=True)
    assert not convnet.empty((4,), "uint8", "cpu").is_pinned
    if convnet.cuda_available():
        with pytest.raises(ValueError, match="pinned memory is host memory"):
            convnet.empty((4,), "uint8", "cuda:0", pinned=True)


@needs_gpu
def test_allocator_blocks_move_between_threads(rng):
    # Blocks freed by one thread's stream and taken by another's (the freeing thread's own
    # reuse skips the wait): results must never see another thread's writes.
    import threading

    data = [rng.standard_normal((257, 129)).astype(np.float32) for _ in range(4)]
    errors = []

    def work(i):
        for step in range(60):
            a = data[(i + step) % 4]
            y = convnet.ops.relu(convnet.tensor(a, "cuda:0"))
            z = convnet.ops.relu(y)  # a second op reading the first's output on this stream
            if not np.array_equal(z.numpy(), np.maximum(a, 0)):
                errors.append((i, step))
            del y, z

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
