"""Kernel microbenchmarks on the AlexNet layer shapes.

    python benchmarks/run.py [--device cpu|cuda:0] [--only NAME] [--json FILE]

Each family module (benchmarks/bench_<family>.py) lists cases; every case is timed here
against the references measured in the same run (NumPy, and PyTorch when importable), so
the table reports ratios, not absolute claims. Memory-bound ops also report GB/s against a
device-to-device copy of the same size measured in the same run. The table ends with a tally of
the issues' speed goals (GOALS below) and the rows that miss them.
"""
import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if list((HERE.parent / "convnet").glob("_C*.so")):  # an in-place build (tools/dev_build.sh)
    sys.path.insert(1, str(HERE.parent))

import convnet  # noqa: E402
from convnet._checks import output_file_problem  # noqa: E402

FAMILIES = ["elementwise", "lrn", "pool", "softmax", "conv", "linear", "augment", "step"]


def try_torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def timer(fns, device, min_time=0.2, max_reps=200):
    """Median seconds per call of each of fns, a list of (fn, sync) (sync None: our device's
    drain). Calls shorter than ~1 ms run back to back in groups with one drain per group, as they
    do inside a training step: otherwise a small op's time would be its launch plus a host round
    trip, not its work. The callables' groups are taken in turn, so a ratio between them compares
    times taken side by side: a host-bound call's time moves with the state of the process (on
    the H200 at 0627c99 a 2 MB copy took 9 us a call here and 5 us in tools/gpu_probe.py host)."""
    own_sync = (lambda: convnet.synchronize(device)) if device != "cpu" else (lambda: None)
    fns = [(fn, sync or own_sync) for fn, sync in fns]
    groups = []
    for fn, sync in fns:
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        groups.append(max(1, min(32, int(1e-3 / max(time.perf_counter() - t0, 1e-7)))))
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < 3 or (time.perf_counter() - start < min_time * len(fns) and len(times[0]) < max_reps):
        for (fn, sync), group, ts in zip(fns, groups, times):
            t0 = time.perf_counter()
            for _ in range(group):
                fn()
            sync()
            ts.append((time.perf_counter() - t0) / group)
    return [statistics.median(ts) for ts in times]


class CopyReference:
    """A same-device copy moving `traffic` bytes (traffic / 2 read, as many written): the ceiling
    of a memory-bound op that moves as many. The same traffic, not just the same order: a larger
    copy hides more of its launch, and the small (fc-sized) ops would be held to a ceiling no op
    of their size can reach. Keeps the tensors of the last size asked for (consecutive rows, such
    as a shape's kernel variants, share them)."""

    def __init__(self, device):
        self.device, self.traffic, self.call, self.moved = device, None, None, 0

    def __call__(self, traffic):
        """The copy as a callable; self.moved: the bytes it reads and writes."""
        import numpy as np

        traffic = min(int(traffic), 1 << 31)
        if traffic != self.traffic:
            self.call = None  # the old pair is freed before the new one is made
            n = max(traffic // 8, 1)
            src = convnet.tensor(np.random.rand(n).astype("float32"), self.device)
            dst = convnet.empty((n,), "float32", self.device)
            self.traffic, self.call, self.moved = traffic, (lambda: dst.copy_(src)), 2 * n * 4
        return self.call


def git_commit():
    if os.environ.get("COMMIT"):  # set by tools/gpu_check.sh where the checkout has no .git
        return os.environ["COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       stderr=subprocess.DEVNULL).decode().strip()
    except Exception:
        return "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0" if convnet.cuda_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128 on a GPU, 16 on the CPU)")
    ap.add_argument("--only", default=None, help="comma-separated families: " + ",".join(FAMILIES))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--profile", action="store_true",
                    help="on a GPU with PyTorch: also list the kernels (and their GPU time) of one call of ours and "
                         "of PyTorch's per case, e.g. which algorithm cuDNN chose")
    args = ap.parse_args(argv)
    # every argument before any timing: an unwritable --json failed after the whole run
    try:
        device = convnet._C.parse_device(args.device)
    except (ValueError, RuntimeError) as e:
        ap.error(f"--device: {e}")
    if args.batch is not None and args.batch < 1:  # 0 meant the default, -4 a NumPy traceback
        ap.error(f"--batch must be >= 1, got {args.batch}")
    batch = args.batch or (128 if device != "cpu" else 16)
    families = FAMILIES if args.only is None else list(dict.fromkeys(args.only.split(",")))  # once each
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:  # printed a skip, then an empty table, and exit 0 ('' ran every family)
        ap.error(f"--only: unknown families {unknown}; choose from {','.join(FAMILIES)}")
    if why := output_file_problem(args.json):  # "" was ignored
        ap.error(why)
    torch = try_torch()
    if torch is not None and device != "cpu" and not torch.cuda.is_available():
        print("# PyTorch has no CUDA here: its columns are left out")
        torch = None
    if torch is not None and device != "cpu":
        # float32 arithmetic on both sides: no TF32 in cuDNN or cuBLAS.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if torch is not None and device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    ctx = {"device": device, "batch": batch, "torch": torch,
           "torch_device": device if device != "cpu" else "cpu"}
    rows = []
    profile = args.profile and torch is not None and device != "cpu"
    to_profile = []  # (row, case): kept for the profile pass after all the timing
    copy = CopyReference(device)
    torch_sync = (lambda: torch.cuda.synchronize()) if torch is not None and device != "cpu" else None
    for fam in families:
        try:
            mod = importlib.import_module(f"bench_{fam}")
        except ImportError as e:
            print(f"# skip {fam}: {e}", file=sys.stderr)
            continue
        for case in mod.cases(ctx):
            row = {"family": fam, "name": case["name"]}
            if case.get("probe"):
                row["probe"] = True  # an experiment's row: not counted against the goals
            # ours, the same-size copy and PyTorch's op; on a GPU timed in turn (timer)
            fns = {"ours": (case["ours"], None)}
            if case.get("bytes"):
                fns["copy"] = (copy(case["bytes"]), None)
            if torch is not None and case.get("torch"):
                fns["torch"] = (case["torch"], torch_sync)
            if device != "cpu":
                times = dict(zip(fns, timer(list(fns.values()), device)))
            else:  # one after another: in turn, our threads and PyTorch's shared 2 cores (x_torch of
                # relu conv1 read 0.62 to 1.57 from round to round on the development machine)
                times = {k: timer([f], device)[0] for k, f in fns.items()}
            t = times["ours"]
            row["ms"] = t * 1e3
            if "copy" in times:
                row["GB/s"] = case["bytes"] / t / 1e9
                row["copy_GB/s"] = copy.moved / times["copy"] / 1e9
                row["vs_copy"] = row["GB/s"] / row["copy_GB/s"]
            if case.get("flops"):
                row["GFLOP/s"] = case["flops"] / t / 1e9
            if case.get("items"):
                row["items/s"] = case["items"] / t
            if case.get("numpy"):
                tn = timer([(case["numpy"], None)], "cpu", min_time=0.1, max_reps=20)[0]
                row["numpy_ms"] = tn * 1e3
                row["x_numpy"] = tn / t  # > 1: we are faster
            if "torch" in times:
                row["torch_ms"] = times["torch"] * 1e3
                row["x_torch"] = times["torch"] / t
            rows.append(row)
            if profile:
                to_profile.append((row, case))
            print(format_row(row), flush=True)
    if profile:
        # After every timing: PyTorch's profiler may leave CUPTI hooked into the process, and
        # each later CUDA call would pay for it.
        profile_kernels(to_profile, torch, copy)
    info = {"device": device, "device_name": device_name(device), "batch": batch, "commit": git_commit(),
            "torch": getattr(torch, "__version__", None), "torch_fp32": torch_fp32_precision(torch, device),
            "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    print_table(info)
    print_goals(info)
    if profile:
        print_kernels(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return info


def device_name(device):
    if device == "cpu":
        return platform.processor() or platform.machine()
    return convnet._C.cuda_device_name(int(device.split(":")[1]))


COLS = [("ms", "{:9.3f}"), ("GFLOP/s", "{:9.1f}"), ("GB/s", "{:8.1f}"), ("vs_copy", "{:7.2f}"), ("gpu_vs_copy", "{:11.2f}"),
        ("items/s", "{:10.0f}"), ("x_numpy", "{:8.2f}"), ("x_torch", "{:8.2f}")]


def format_row(row):
    cells = [f"{row['family'] + ' ' + row['name']:<36}"]
    for k, fmt in COLS:
        cells.append(fmt.format(row[k]) if k in row else " " * len(fmt.format(0)))
    return " ".join(cells)


def kernel_times(torch, fn):
    """[(kernel name, GPU microseconds)] of one call of fn, from PyTorch's profiler (CUPTI sees every
    kernel in the process, ours included), longest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            out.append((e.key, round(float(us), 1)))
    return sorted(out, key=lambda kv: -kv[1])


def profile_kernels(to_profile, torch, copy):
    """For each (row, case): the row's kernels (GPU time of one call, ours and PyTorch's) and
    gpu_vs_copy, the same ratio as vs_copy from the kernels' GPU time alone, without the host's
    launch and dispatch."""
    for row, case in to_profile:
        row["kernels"] = kernel_times(torch, case["ours"])
        if case.get("torch"):
            row["torch_kernels"] = kernel_times(torch, case["torch"])
        gpu_us = sum(us for _, us in row["kernels"])
        if case.get("bytes") and gpu_us > 0:
            copy_us = sum(us for _, us in kernel_times(torch, copy(case["bytes"])))
            if copy_us > 0:  # GB/s of ours over GB/s of the copy, both from GPU time
                row["gpu_vs_copy"] = (case["bytes"] / gpu_us) / (copy.moved / copy_us)


def print_kernels(rows):
    print("\n# kernels of one call (GPU us), ours then PyTorch's")
    for row in rows:
        for who in ("kernels", "torch_kernels"):
            if row.get(who):
                cells = "; ".join(f"{us:.0f} {name[:90]}" for name, us in row[who][:6])
                print(f"{row['family']} {row['name']} [{'ours' if who == 'kernels' else 'torch'}]: {cells}")


def torch_fp32_precision(torch, device):
    """What PyTorch's float32 convolutions and matmuls really use (evidence that TF32 is off)."""
    if torch is None or device == "cpu":
        return None
    b = torch.backends
    text = f"cudnn allow_tf32 {b.cudnn.allow_tf32}, matmul allow_tf32 {b.cuda.matmul.allow_tf32}"
    conv = getattr(b.cudnn, "conv", None)  # newer PyTorch: per-backend precision ('none': not TF32)
    if conv is not None and hasattr(conv, "fp32_precision"):
        text += f", cudnn conv fp32_precision {conv.fp32_precision}"
    return text


def print_table(info):
    print(f"\n# {info['device']} ({info['device_name']}), batch {info['batch']}, commit {info['commit']}, "
          f"torch {info['torch']}" + (f" ({info['torch_fp32']})" if info.get("torch_fp32") else ""))
    print("# x_numpy / x_torch: reference time over ours (above 1 = ours faster); vs_copy: share of copy bandwidth;")
    print("# gpu_vs_copy (--profile): the same from the kernels' GPU time alone (no host launch/dispatch time)")
    head = [f"{'op':<36}"] + [f"{k:>{len(fmt.format(0))}}" for k, fmt in COLS]
    print(" ".join(head))
    for row in info["rows"]:
        print(format_row(row))


# The issues' speed goals, per family: (metric, goal on a GPU, goal on the CPU). Issue 2: the
# memory-bound kernels at 0.8 of a same-size copy on a GPU, at PyTorch's speed on the CPU;
# issue 3: conv and fc at 0.7 of cuDNN/cuBLAS on a GPU, 0.5 of PyTorch on the CPU.
GOALS = {"elementwise": (2, "vs_copy", "x_torch", 0.8, 1.0), "lrn": (2, "vs_copy", "x_torch", 0.8, 1.0),
         "pool": (2, "vs_copy", "x_torch", 0.8, 1.0), "softmax": (2, "vs_copy", "x_torch", 0.8, 1.0),
         "conv": (3, "x_torch", "x_torch", 0.7, 0.5), "linear": (3, "x_torch", "x_torch", 0.7, 0.5)}


def goal_misses(info):
    """(rows with a goal and the metric measured, [(issue, row, metric, value, goal)] below it).
    Rows of non-default kernel variants (names ending in ' v<N>') and probes (shapes that are not
    AlexNet's, there to test a hypothesis) are not counted."""
    on_gpu = info["device"] != "cpu"
    counted, misses = 0, []
    for row in info["rows"]:
        goal = GOALS.get(row["family"])
        last = row["name"].rsplit(" ", 1)[-1]
        if goal is None or row.get("probe") or (last[:1] == "v" and last[1:].isdigit()):
            continue
        issue, gpu_metric, cpu_metric, gpu_goal, cpu_goal = goal
        metric, target = (gpu_metric, gpu_goal) if on_gpu else (cpu_metric, cpu_goal)
        if metric not in row:
            continue
        counted += 1
        if row[metric] < target:
            misses.append((issue, row, metric, row[metric], target))
    return counted, misses


def print_goals(info):
    counted, misses = goal_misses(info)
    if not counted:
        return
    print(f"\n# issue goals ({'GPU' if info['device'] != 'cpu' else 'CPU'}): {counted - len(misses)} of {counted} "
          f"rows met" + (", below:" if misses else ""))
    for issue, row, metric, value, target in misses:
        extra = f", gpu_vs_copy {row['gpu_vs_copy']:.2f}" if metric == "vs_copy" and "gpu_vs_copy" in row else ""
        print(f"#   issue {issue}: {row['family']} {row['name']}: {metric} {value:.2f} < {target}{extra}")


if __name__ == "__main__":
    main()
