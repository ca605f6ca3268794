"""Builds convnet._C with CMake + ninja.

CONVNET_CUDA=1 requires the CUDA backend, CONVNET_CUDA=0 skips it; unset, it is built
whenever a CUDA compiler is found (system nvcc, CUDA_HOME, or the nvidia-cuda-nvcc-cu12
wheel); CONVNET_CUDA=emulate builds it for the CPU (tools/cuda_emulator: for tests only).
CONVNET_CUDA_ARCH overrides the GPU architectures (CMake syntax, e.g. "90-real").
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def find_nvcc():
    """The CUDA compiler to use, or None. Same search order as the error message in CMakeLists.txt."""
    for var in ("CUDACXX", "CMAKE_CUDA_COMPILER"):
        if os.environ.get(var) and Path(os.environ[var]).exists():
            return os.environ[var]
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and (Path(os.environ[var]) / "bin" / "nvcc").exists():
            return str(Path(os.environ[var]) / "bin" / "nvcc")
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda/bin/nvcc"
    try:  # pip's nvidia-cuda-nvcc-cu12 wheel puts the toolkit under site-packages/nvidia/cuda_nvcc
        import nvidia.cuda_nvcc as w

        for base in w.__path__:
            if (Path(base) / "bin" / "nvcc").exists():
                return str(Path(base) / "bin" / "nvcc")
    except ImportError:
        pass
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()  # .../convnet
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("CONVNET_CUDA", "").strip().lower()
        modes = {"": "AUTO", "auto": "AUTO", "1": "ON", "on": "ON", "true": "ON", "0": "OFF", "off": "OFF",
                 "false": "OFF", "emulate": "EMULATE"}
        if mode not in modes:
            raise SystemExit(f"CONVNET_CUDA={os.environ['CONVNET_CUDA']!r}: expected 1, 0, auto or emulate")
        cuda = modes[mode]
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCONVNET_CUDA={cuda}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-G", "Ninja",
        ]
        if cuda in ("ON", "AUTO"):
            nvcc = find_nvcc()
            if nvcc:
                args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if os.environ.get("CONVNET_CUDA_ARCH"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CONVNET_CUDA_ARCH']}")
        if os.environ.get("CONVNET_NATIVE", "1") == "0":
            args.append("-DCONVNET_NATIVE=OFF")
        subprocess.check_call(["cmake", str(ROOT)] + args, cwd=build_dir)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build_dir)


setup(ext_modules=[Extension("convnet._C", sources=[])], cmdclass={"build_ext": CMakeBuild})
