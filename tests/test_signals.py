"""Ctrl-C and SIGTERM in the command-line tools (convnet/_signals.py). Training's own handling
(the checkpoint of the last complete step) is in test_train.py; the workers of the built-in
generator and of convnet.prepare in test_data.py."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import convnet
from convnet import _signals, evaluate, plots, train
from convnet.data import builtin
from convnet.data import prepare as prepare_module

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def handlers():
    return {s: signal.getsignal(s) for s in SIGNALS}


def test_command_installs_and_restores_the_handlers():
    before, inside = handlers(), {}

    @_signals.command("tool")
    def main(x):
        inside.update(handlers())
        return x

    assert main(7) == 7
    assert inside[signal.SIGTERM] not in (before[signal.SIGTERM], signal.SIG_DFL, signal.SIG_IGN)
    assert handlers() == before

    @_signals.command("tool")
    def fails():
        raise ValueError("not ours")

    with pytest.raises(ValueError, match="not ours"):  # other errors pass through
        fails()
    assert handlers() == before


@pytest.mark.parametrize("exc, code, said", [(KeyboardInterrupt, 130, "interrupted"),
                                             (_signals.Terminated, 143, "stopped by SIGTERM")])
def test_command_ends_with_one_line(exc, code, said, capsys):
    before = handlers()

    @_signals.command("tool", "; do this next")
    def main():
        raise exc

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == code
    assert capsys.readouterr().err == f"\ntool: {said}; do this next\n"
    assert handlers() == before
    signum = _signals.signal_of(exc())
    assert _signals.exit_code(signum) == code and _signals.describe(signum) == said


def test_interrupt_for():
    assert type(_signals.interrupt_for(signal.SIGTERM)) is _signals.Terminated
    assert type(_signals.interrupt_for(signal.SIGINT)) is KeyboardInterrupt
    assert isinstance(_signals.Terminated(), KeyboardInterrupt)  # so `except KeyboardInterrupt` cleans up


_SIGNALLED = """
import os, signal, sys, time
from convnet import _signals

@_signals.command("tool")
def main():
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(60)

main()
"""


@pytest.mark.parametrize("sig, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")])
def test_a_real_signal(sig, code, said):
    """In a child process: were the handler missing, a SIGTERM would end pytest."""
    root = Path(convnet.__file__).parent.parent
    p = subprocess.run([sys.executable, "-c", _SIGNALLED, sig], capture_output=True, text=True, cwd=root, timeout=60)
    assert p.returncode == code and p.stderr == f"\ntool: {said}\n", (p.returncode, p.stderr)


def _raise_terminated(*args, **kwargs):
    raise _signals.Terminated


@pytest.mark.parametrize("tool", ["train", "evaluate", "plots", "prepare", "builtin"])
def test_every_tool_ends_a_signal_with_one_line(tool, tmp_path, monkeypatch, capsys):
    """Each command-line tool, with a SIGTERM (or Ctrl-C) in its work: evaluate and plots gave a
    KeyboardInterrupt traceback for a Ctrl-C, and every tool but training's steps ended at once on a
    SIGTERM, with no word."""
    main, prog, argv = {
        "train": (train.main, "convnet-train", []),
        "evaluate": (evaluate.main, "convnet-evaluate", ["RUN"]),
        "plots": (plots.main, "convnet.plots", ["RUN"]),
        "prepare": (prepare_module.main, "prepare", ["SRC", str(tmp_path / "dst")]),
        "builtin": (builtin.main, "convnet.data.builtin", [str(tmp_path / "dst")]),
    }[tool]
    module, name = {"train": (train, "train"), "evaluate": (evaluate, "evaluate"), "plots": (evaluate, "load_net"),
                    "prepare": (prepare_module, "prepare"), "builtin": (builtin, "ensure")}[tool]
    monkeypatch.setattr(module, name, _raise_terminated)
    if tool == "plots":
        monkeypatch.setattr(plots, "_pyplot", lambda: None)  # with or without matplotlib
    before = handlers()
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 143
    except KeyboardInterrupt:  # not let through: pytest would take it for the user's and stop
        pytest.fail("the Terminated went through the tool")
    else:
        pytest.fail("no SystemExit")
    err = capsys.readouterr().err
    assert f"{prog}: stopped by SIGTERM" in err and "Traceback" not in err, err
    assert handlers() == before


def test_every_tool_has_its_command():
    """pyproject's console scripts: each names a decorated main (convnet-plots was missing)."""
    tomllib = pytest.importorskip("tomllib")
    import importlib

    # the checkout's (the tests may run against an installed convnet)
    scripts = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == ["convnet-evaluate", "convnet-plots", "convnet-prepare", "convnet-train"]
    for name, target in scripts.items():
        module, attr = target.split(":")
        main = getattr(importlib.import_module(module), attr)
        assert main.__wrapped__.__name__ == "main", name  # through _signals.command
