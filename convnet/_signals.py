"""Ctrl-C and SIGTERM in the command-line tools. A SIGTERM (what `kill` and a cluster's scheduler
send before they stop a job) raises Terminated where a Ctrl-C raises KeyboardInterrupt, so the same
cleanup runs: a pool's workers are stopped (a tool that a SIGTERM killed outright left its
workers behind, writing to a closed pipe or waiting for work forever) and files are left as a rerun
expects. The tool then ends with one line and 128 + the signal's number, not a traceback."""
import functools
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised as a KeyboardInterrupt is for a Ctrl-C (so `except KeyboardInterrupt`
    cleans up after both)."""


def interrupt_for(signum):
    """The exception that a signal raises: Terminated for SIGTERM, else KeyboardInterrupt."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_of(exc):
    """The signal an interrupt stands for: SIGTERM for Terminated, else SIGINT (a Ctrl-C)."""
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def describe(signum):
    """How a tool that a signal stopped ends its last line (also convnet.train's own messages)."""
    return "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"


def exit_code(signum):
    """128 + the signal's number: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + signum


def _raise_terminated(signum, frame):
    raise Terminated


def command(prog, hint=""):
    """Decorates a tool's main(): inside it SIGTERM raises Terminated (in the main thread; from
    another thread nothing changes), and a Ctrl-C or SIGTERM that reaches it ends the process with
    "PROG: interrupted" (or "stopped by SIGTERM") + hint and exit code 130 or 143."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            in_main_thread = threading.current_thread() is threading.main_thread()
            if in_main_thread:
                old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
                signal.signal(signal.SIGTERM, _raise_terminated)
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as e:
                if in_main_thread:  # a further signal during the message ends the process as that signal does
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                print(f"\n{prog}: {describe(signal_of(e))}{hint}", file=sys.stderr, flush=True)
                sys.exit(exit_code(signal_of(e)))
            finally:
                if in_main_thread:
                    for s, handler in old.items():
                        if handler is not None:  # None: not set from Python (never so for these two)
                            signal.signal(s, handler)

        return run

    return wrap


def worker_init(parent_handles_interrupt=False):
    """Initializer of a tool's worker processes. A forked worker inherits its parent's handlers,
    with which the SIGTERM of Pool.terminate() raised Terminated inside it (a traceback, or, in a
    ProcessPoolExecutor, an exception sent back as a result) instead of ending it.
    parent_handles_interrupt: a Ctrl-C (which reaches every process of the terminal's group) is
    ignored, for a pool whose parent stops it (else each busy worker printed a traceback)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent_handles_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
