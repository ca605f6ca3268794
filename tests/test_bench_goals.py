"""benchmarks/run.py's tally of the issues' speed goals (goal_misses): which rows count, which
metric and goal apply on a GPU and on the CPU. Synthetic rows; no timing here."""
import importlib.util
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run():
    if not RUN.exists():
        pytest.skip(f"{RUN} not found (tests run outside the checkout)")
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_module(family):
    """benchmarks/bench_<family>.py, loaded on its own (a fresh module each call)."""
    path = RUN.parent / f"bench_{family}.py"
    if not path.exists():
        pytest.skip(f"{path} not found (tests run outside the checkout)")
    spec = importlib.util.spec_from_file_location(f"bench_{family}_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ROWS = [
    {"family": "elementwise", "name": "relu conv1", "vs_copy": 0.9, "x_torch": 0.95},
    {"family": "pool", "name": "max_pool_backward 55->27", "vs_copy": 0.3, "x_torch": 3.0, "gpu_vs_copy": 0.28},
    {"family": "conv", "name": "conv2 backward-filter", "x_torch": 0.6},
    {"family": "conv", "name": "conv2 backward-filter v5", "x_torch": 0.1},  # a variant row: not counted
    {"family": "lrn", "name": "lrn conv1"},                                   # no metric measured
    {"family": "lrn", "name": "lrn conv1@56x56 probe", "probe": True, "vs_copy": 0.1, "x_torch": 0.1},  # not counted
    {"family": "step", "name": "alexnet 1 device b128", "x_torch": 0.2},     # no goal
]


def test_goals_on_a_gpu(run):
    counted, misses = run.goal_misses({"device": "cuda:0", "rows": ROWS})
    assert counted == 3
    assert [(issue, row["name"], metric, goal) for issue, row, metric, _, goal in misses] == [
        (2, "max_pool_backward 55->27", "vs_copy", 0.8), (3, "conv2 backward-filter", "x_torch", 0.7)]


def test_goals_on_the_cpu(run):
    counted, misses = run.goal_misses({"device": "cpu", "rows": ROWS})
    assert counted == 3
    assert [(issue, row["name"], value, goal) for issue, row, _, value, goal in misses] == [
        (2, "relu conv1", 0.95, 1.0)]


def test_goals_printed(run, capsys):
    run.print_goals({"device": "cuda:0", "rows": ROWS})
    out = capsys.readouterr().out
    assert "1 of 3 rows met" in out and "max_pool_backward 55->27: vs_copy 0.30 < 0.8, gpu_vs_copy 0.28" in out


@pytest.mark.parametrize("family,ops_names,getter", [("pool", ("max_pool", "max_pool_backward"), "pool_variant"),
                                                     ("lrn", ("lrn", "lrn_backward"), "lrn_variant")])
def test_variant_rows_run_their_variant(monkeypatch, family, ops_names, getter):
    """Each "... vN" row of bench_<family>.py calls the op under CUDA variant N, each plain row
    under the default (once, every variant row timed the default). Variant rows forced on the CPU
    (ctx variant_rows; the CPU twins ignore the variant), the variant in force recorded per call."""
    from convnet import _C, ops

    mod = bench_module(family)
    seen = []
    for name in ops_names:
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, real=real, **k: seen.append(getattr(_C, getter)()) or real(*a, **k))
    default = getattr(_C, getter)()
    cases = mod.cases({"device": "cpu", "batch": 1, "torch": None, "variant_rows": True})
    tagged = [c for c in cases if c["name"].rsplit(" ", 1)[-1][:1] == "v"]
    assert tagged and len(tagged) % len(ops_names) == 0
    try:
        for case in cases:
            seen.clear()
            case["ours"]()
            tag = case["name"].rsplit(" ", 1)[-1]
            want = int(tag[1:]) if case in tagged else default
            assert seen and set(seen) == {want}, (case["name"], seen)
    finally:
        getattr(_C, "set_" + getter)(default)


def test_timer_takes_turns(run):
    """On a GPU ours, the copy and PyTorch's op are timed in turn, a group of calls each, so their
    ratios compare times taken side by side. Fake calls record the order."""
    calls = []
    fns = [(lambda: calls.append("a"), None), (lambda: calls.append("b"), None)]
    ta, tb = run.timer(fns, "cpu", min_time=0.005, max_reps=5)
    assert ta > 0 and tb > 0
    assert calls[:4] == ["a", "a", "b", "b"]  # each calibrated alone: one call to warm up, one timed
    groups = []  # the rest: runs of one name, each name's of one length (32 for a call under 1/32 ms)
    for name in calls[4:]:
        if groups and groups[-1][0] == name:
            groups[-1][1] += 1
        else:
            groups.append([name, 1])
    assert [n for n, _ in groups] == ["a", "b"] * (len(groups) // 2) and len(groups) % 2 == 0
    assert 3 <= len(groups) // 2 <= 5
    for name in "ab":
        assert len({count for n, count in groups if n == name}) == 1


def test_profile_pass(run, monkeypatch):
    """--profile: each row's kernels and gpu_vs_copy, after all the timing. PyTorch's profiler
    faked: every call 'runs' one kernel of 2 us, so ours and the same-size copy take the same GPU
    time and gpu_vs_copy is the row's bytes over the copy's."""
    def kernel_times(torch, fn):
        fn()
        return [("kernel", 2.0)]

    monkeypatch.setattr(run, "kernel_times", kernel_times)
    case = next(c for c in bench_module("elementwise").cases({"device": "cpu", "batch": 2, "torch": None}) if c["name"] == "relu fc6")
    row, plain = {"family": "elementwise", "name": "relu fc6"}, {"family": "softmax", "name": "no bytes"}
    copy = run.CopyReference("cpu")
    run.profile_kernels([(row, case), (plain, {"ours": lambda: None})], None, copy)
    assert row["kernels"] == [("kernel", 2.0)] and "torch_kernels" not in row
    relu_bytes = 2 * 2 * 4096 * 4  # reads and writes (2, 4096) float32
    assert copy.moved == relu_bytes and row["gpu_vs_copy"] == pytest.approx(1.0)
    assert plain["kernels"] == [("kernel", 2.0)] and "gpu_vs_copy" not in plain


def test_copy_reference(run):
    """The copy moves the traffic asked for (rounded down to whole float pairs) and keeps only the
    last size's tensors."""
    copy = run.CopyReference("cpu")
    f = copy(1000)
    f()
    assert copy.moved == 1000 and copy(1000) is f
    g = copy(4100)
    assert g is not f and copy.moved == 4096
    assert copy(3) and copy.moved == 8  # at least one float each way


def test_arguments_refused_before_any_timing(run, tmp_path, capsys, monkeypatch):
    """Each was found after timing, or not at all: an unknown family printed a skip and an empty
    table (exit 0), '' ran every family, a repeated one ran twice, --batch 0 meant the default
    and -4 a NumPy traceback, an unwritable --json failed after the whole run."""
    monkeypatch.setattr(run, "CopyReference", None)  # nothing past the checks may run
    for argv, message in [(["--only", "nosuch"], "--only: unknown families ['nosuch']"),
                          (["--only", ""], "--only: unknown families ['']"),
                          (["--only", "pool,"], "--only: unknown families ['']"),
                          (["--batch", "0"], "--batch must be >= 1, got 0"),
                          (["--batch", "-4"], "--batch must be >= 1, got -4"),
                          (["--json", str(tmp_path / "missing" / "x.json")], "its folder does not exist"),
                          (["--json", str(tmp_path)], "is a folder"),
                          (["--json", ""], "--json: the file name is empty"),  # was no file, exit 0
                          (["--device", "gpu"], "--device: "),
                          (["--device", "cuda:99"], "--device: ")]:
        with pytest.raises(SystemExit) as e:
            run.main(["--device", "cpu"] + argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv
