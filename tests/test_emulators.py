"""The CUDA kernels' logic checked without a GPU: tools/emulate_gemm.cu (the conv/linear GEMM
core's per-thread steps, index maps and split-K rules, compiled for the host by nvcc),
tools/emulate_winograd.cu (variant 3's Winograd transforms and GEMMs, the same way),
tools/emulate_fft.cu (variant 5's FFT backward-filter: the spectrum kernel's steps, barrier by
barrier, the product GEMMs and the inverse at the taps) and
tools/emulate_lrn_pool.py (the LRN and max-pool kernel bodies compiled by g++) and
tools/emulate_softmax.py (the softmax kernels, one OS thread a CUDA thread, so that barriers and
warp shuffles are real), each against float64 references; tools/gpu_probe.py smoke-run on the
CPU; and the launch rewriting of the whole-backend CUDA emulator (tools/cuda_emulator, run by
tools/emulate_cuda.sh and CI, not here: it takes minutes). Skipped, with the reason, where the
compilers or the tools/ folder are missing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _need(tool, path):
    if not path.exists():
        pytest.skip(f"{path} not found (tests run outside the checkout)")
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not on PATH")


def _run_cuda_emulator(name, tmp_path):
    """Compiles tools/<name>.cu as host code with nvcc, runs it; returns its output (it must exit 0)."""
    src = TOOLS / f"{name}.cu"
    _need("nvcc", src)
    exe = tmp_path / name
    subprocess.run(["nvcc", "-std=c++17", "-O2", "-x", "cu", str(src), "-o", str(exe)], check=True,
                   capture_output=True, text=True, timeout=600)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out


def test_gemm_emulator(tmp_path):
    _run_cuda_emulator("emulate_gemm", tmp_path)


def test_winograd_emulator(tmp_path):
    """Variant 3's Winograd convolutions (csrc/cuda/winograd.cuh): the transform functors and the
    GEMM core's steps on the CPU against a float64 direct conv; it prints the error figures."""
    out = _run_cuda_emulator("emulate_winograd", tmp_path)
    assert "all passed" in out.stdout, out.stdout[-3000:]


def test_fft_emulator(tmp_path):
    """Variant 5's FFT backward-filter (csrc/cuda/fft.cuh) on the CPU against a float64 direct sum."""
    out = _run_cuda_emulator("emulate_fft", tmp_path)
    assert "all passed" in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize("name", ["emulate_lrn_pool", "emulate_softmax"])
def test_python_driven_emulator(name):
    src = TOOLS / f"{name}.py"
    _need("g++", src)
    out = subprocess.run([sys.executable, str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and " 0 failed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def test_gpu_probe_runs_on_the_cpu():
    """tools/gpu_probe.py (what gpu_check.sh's ncu and memcheck stages run on a GPU) runs, on the
    CPU, so a GPU session does not find it broken."""
    src = TOOLS / "gpu_probe.py"
    if not src.exists():
        pytest.skip(f"{src} not found (tests run outside the checkout)")
    import convnet
    root = str(Path(convnet.__file__).resolve().parent.parent)  # the convnet this test imports
    env = dict(os.environ, CONVNET_PROBE_DEVICE="cpu", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(src), "small"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "softmax" in out.stdout and "concat/split" in out.stdout, out.stdout
    assert "max_pool v1" in out.stdout and "lrn backward" in out.stdout, out.stdout
    assert "lrn out of range" in out.stdout and "lrn size 11" in out.stdout, out.stdout
    out = subprocess.run([sys.executable, str(src), "host"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("\n") == 12 and "dropout_backward" in out.stdout, out.stdout
    assert out.stdout.count("in turn with copy_") == 2, out.stdout  # as benchmarks/run.py times them


def test_rewrite_launches():
    """tools/cuda_emulator/rewrite_launches.py (the CUDA emulator's one source change): every
    launch of csrc/ -- templated kernels, a dim3 grid, arguments with calls and casts, a launch
    over two lines -- becomes an emu::launch call with the same configuration and arguments; a
    <<<...>>> in a comment stays."""
    src = TOOLS / "cuda_emulator" / "rewrite_launches.py"
    if not src.exists():
        pytest.skip(f"{src} not found (tests run outside the checkout)")
    sys.path.insert(0, str(src.parent))
    try:
        from rewrite_launches import rewrite
    finally:
        sys.path.remove(str(src.parent))
    text = """// after every <<<...>>>: check
  gemm_kernel<Cfg, A_KFAST, B_KFAST><<<grid, Cfg::THREADS, 0, stream()>>>(g, a, b, st, partial);
  relu_kernel<<<blocks_for(n / 4 + 1, 256), 256, 0, stream()>>>(x, y, n, vector_count(n, nullptr, x, y));
  copy_rows_kernel<<<dim3(x, y), 256, 0, stream()>>>(src, (int)(a * b),
                                                      dst);
"""
    out = rewrite(text)
    assert out.splitlines()[0] == "// after every <<<...>>>: check"
    assert ("::emu::launch(::emu::Config(grid, Cfg::THREADS, 0, stream()), "
            "[&] { gemm_kernel<Cfg, A_KFAST, B_KFAST>(g, a, b, st, partial); });") in out
    assert ("::emu::launch(::emu::Config(blocks_for(n / 4 + 1, 256), 256, 0, stream()), "
            "[&] { relu_kernel(x, y, n, vector_count(n, nullptr, x, y)); });") in out
    assert "::emu::launch(::emu::Config(dim3(x, y), 256, 0, stream()), [&] { copy_rows_kernel(src, (int)(a * b)," in out
    assert out.count("<<<") == 1 and out.count("::emu::launch") == 3
    with pytest.raises(ValueError, match="without arguments"):
        rewrite("k<<<1, 1>>>;")
    # every launch in csrc/ is rewritten (none is left for g++ to trip on)
    csrc = TOOLS.parent / "csrc"
    for path in list(csrc.rglob("*.cu")) + list(csrc.rglob("*.cuh")):
        code = [line for line in rewrite(path.read_text(), str(path)).splitlines() if "<<<" in line]
        assert all(line.split("<<<")[0].count("//") for line in code), (path, code)
