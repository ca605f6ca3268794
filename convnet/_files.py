"""Files written whole or not at all, locks, and the temporaries that killed writers leave: the
one protocol of checkpoints (convnet.checkpoint), datasets (convnet.data) and run records
(convnet.train).

A file is written to a temporary beside it, .NAME.tmpPID-N (the writer's pid, and a count that
keeps one process's threads apart), flushed to disk and renamed over NAME: a reader sees the old
file or the new one. A writer killed midway leaves its temporary, which no later write replaces
(the name holds the dead writer's pid): remove_stale_temporaries() deletes those."""
import contextlib
import itertools
import os
import re
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock (two writers at once may then collide)
    fcntl = None

_writers = itertools.count()

# .NAME.tmpPID-N; .NAME.tmpPID from older saves, with .npy or .npz after it from older datasets
_TEMPORARY = re.compile(r"\.(.+)\.tmp(\d+)(?:-\d+|\.np[yz])?")


def writer():
    """A name for one write, unique among this process's threads; its pid tells
    remove_stale_temporaries() whether the writer is alive."""
    return f"{os.getpid()}-{next(_writers)}"


def temporary(path):
    """Where a write of path goes before its rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{writer()}")


def fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path):
    """An open binary file whose contents replace path when the block ends (when it raises, the
    temporary goes and path stays as it was)."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_folder(path.parent)


def atomic_write(path, chunks):
    """Write the byte chunks to path so that a reader sees either the old file or the new one."""
    with atomic_file(path) as f:
        for c in chunks:
            f.write(c)


def alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def remove_stale_temporaries(folder):
    """Delete the temporaries in folder whose writer no longer runs; returns their paths. A live
    process's are kept: it may be writing them now. Files only, of exactly these names: every
    .*.tmp* went once, a user's .env.tmpl too, and a folder so named stopped the run."""
    removed = []
    for f in sorted(Path(folder).glob(".*")):
        m = _TEMPORARY.fullmatch(f.name)
        if m and f.is_file() and not alive(int(m.group(2))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextlib.contextmanager
def locked(lock_file, waiting=None):
    """Hold an exclusive lock on lock_file (created if missing) for the block, across threads and
    processes (an flock belongs to the open file, so two threads' opens exclude each other too);
    `waiting`, if given, is printed when another holds it first. Closing the file releases it, as
    does the process dying. The file stays: removing it would let a writer waiting on the old file
    and one on a new file both in."""
    with open(lock_file, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
        yield
