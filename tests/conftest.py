"""Shared test fixtures: every kernel test runs once per device (cpu, and cuda:0 when a GPU
is present, skipped with the reason otherwise), with output poisoning on so that an element
a kernel forgets to write reads as NaN."""
import os

# The NumPy references run on one BLAS thread: OpenBLAS threads on 2 shared cores made a
# small float64 matmul 100x slower. Must be set before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import convnet  # noqa: E402
from convnet import _C  # noqa: E402

_C.set_poison(True)


def cuda_param(value, id):
    """A test parameter that needs a GPU: skipped, with the reason, where none is usable."""
    if convnet.cuda_available():
        return pytest.param(value, id=id)
    why = "no GPU visible" if _C.cuda_built() else "convnet built without CUDA"
    return pytest.param(value, id=id, marks=pytest.mark.skip(reason=f"CUDA: {why}"))


def _devices():
    return [pytest.param("cpu", id="cpu"), cuda_param("cuda:0", "cuda")]


@pytest.fixture(params=_devices())
def device(request):
    return request.param


@pytest.fixture
def rng(request):
    # A different but reproducible stream per test.
    seed = abs(hash(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def dead_pid():
    """The pid of a process that has just exited: what a writer killed midway leaves in its
    temporaries' names."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                       check=True)
    return int(p.stdout)
