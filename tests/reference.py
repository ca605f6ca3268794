"""NumPy float64 references and the finite-difference gradient check every kernel test uses."""
import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """d sum(f(x)) / dx by central differences, in float64. `f` maps an array to an array
    (or scalar); use with a random projection to check a full Jacobian-vector product."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = np.sum(f(x))
        flat[i] = old - eps
        fm = np.sum(f(x))
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a, b):
    """max |a - b| / max(|b|, tiny): the relative error of a against reference b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    assert np.all(np.isfinite(a)), "result has NaN/inf (an unwritten, poisoned element?)"
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if a.size else 0.0


def assert_close(a, b, tol=1e-5, what="result"):
    err = rel_error(a, b)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


# ---- references ----

def digests_by_thread_count(code, threads=("1", "2", "3", "5")):
    """Run `code` (a script printing a SHA-256 of some results) under each OpenMP thread count, with
    this checkout's convnet; returns the digests (the CPU kernels promise the same bits for all)."""
    import os
    import subprocess
    import sys

    import convnet

    root = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))  # this convnet, built
    digests = []
    for n in threads:
        env = dict(os.environ, OMP_NUM_THREADS=n, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # cwd=root too: `python -c` puts the working directory first on sys.path
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             check=True)
        digests.append(out.stdout.strip())
    assert len(digests[0]) == 64, digests[0]
    return digests


def relu(x):
    return np.maximum(x, 0.0)
