"""Shared test fixtures: every kernel test runs once per device (cpu, and cuda:0 when a GPU
is present, skipped with the reason otherwise), with output poisoning on so that an element
a kernel forgets to write reads as NaN."""
import numpy as np
import pytest

import convnet
from convnet import _C

_C.set_poison(True)


def _devices():
    params = [pytest.param("cpu", id="cpu")]
    if convnet.cuda_available():
        params.append(pytest.param("cuda:0", id="cuda"))
    else:
        why = "no GPU visible" if _C.cuda_built() else "convnet built without CUDA"
        params.append(pytest.param("cuda:0", id="cuda", marks=pytest.mark.skip(reason=f"CUDA: {why}")))
    return params


@pytest.fixture(params=_devices())
def device(request):
    return request.param


@pytest.fixture
def rng(request):
    # A different but reproducible stream per test.
    seed = abs(hash(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
