"""The run directory's life: where it is, who may replace it, and who may write to it.

* A marker file (:data:`MARKER`) is written when dmlkit creates a run directory; ``--overwrite``
  replaces only a directory that holds it, and then removes only the names a run writes
  (:data:`RUN_ENTRIES`). Anything else is never deleted.
* Without ``--out`` each run gets a new ``runs/<date>-<time>-<method>-<dataset>``, and ``runs/latest``
  points at it (a symlink; a one-line text file where symlinks fail). A ``runs/latest`` that dmlkit
  did not write is left alone.
* A lock file (:data:`LOCK`, the holder's PID and host) keeps one writer per run directory; a lock
  whose process is gone is taken over with a warning.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dmlkit.engine.config import ConfigError

log = logging.getLogger("dmlkit")

MARKER = ".dmlkit-run"
LOCK = ".dmlkit.lock"
#: what a run writes at the top of its directory: the only names ``--overwrite`` removes
RUN_ENTRIES = ("config.yaml", "metrics.json", "report.md", "checkpoints", "logs", "pictures")
LATEST = "latest"
_LATEST_TEXT_HEADER = "# dmlkit: the latest run directory in this folder"
#: environment variable through which DDP worker processes learn rank 0's default run directory
OUT_ENV = "DMLKIT_RUN_DIR"


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (exists, locked, not writable). CLI exit 2."""


class RunInterrupted(Exception):
    """Ctrl-C during training: where it stopped. The CLI exits 130."""

    def __init__(self, out: Path, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.out, self.epoch, self.step = out, epoch, step


def is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0


def default_out(method: str, dataset: str, root: Path = Path("runs")) -> Path:
    """A new ``runs/<YYYYmmdd-HHMMSS>-<method>-<dataset>`` (``-2``, ``-3`` … if taken)."""
    if not is_rank_zero() and os.environ.get(OUT_ENV):
        return Path(os.environ[OUT_ENV])
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(dataset.split(":", 1)[-1]).name or dataset).strip("-")
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{tag or 'data'}"
    out, n = root / name, 1
    while out.exists() or out.is_symlink():
        n += 1
        out = root / f"{name}-{n}"
    return out


def resolve_latest(out: Path) -> Path:
    """``runs/latest`` as the directory it points at (the symlink, or dmlkit's text-file fallback)."""
    if out.name == LATEST and out.is_file() and not out.is_symlink():
        lines = out.read_text(errors="replace").splitlines()
        if len(lines) == 2 and lines[0] == _LATEST_TEXT_HEADER:
            return out.parent / lines[1]
    return out


def point_latest(out: Path) -> None:
    """Make ``out.parent/latest`` point at ``out``, unless a ``latest`` dmlkit did not write is there."""
    link = out.parent / LATEST
    if (link.exists() or link.is_symlink()) and not _ours(link):
        log.warning("%s was not written by dmlkit; left as is (this run is %s)", link, out)
        return
    tmp = out.parent / f".{LATEST}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(out.name, tmp, target_is_directory=True)
    except OSError:  # no symlinks here (some Windows and network file systems): a text file
        tmp.write_text(f"{_LATEST_TEXT_HEADER}\n{out.name}\n")
    os.replace(tmp, link)


def _ours(link: Path) -> bool:
    if link.is_symlink():
        target = os.readlink(link)
        return os.sep not in target and (link.parent / target / MARKER).is_file()
    return link.is_file() and link.read_text(errors="replace").startswith(_LATEST_TEXT_HEADER)


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run directory that cannot be used as asked."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory; pass a directory path for the run")
    if resume:
        if overwrite:
            raise RunDirError("--resume continues a run and --overwrite replaces it; pass one of them")
        check_lock(out)
        return
    _check_writable(out)
    if out.is_dir() and any(out.iterdir()):
        check_lock(out)
        if not overwrite:
            raise RunDirError(f"run directory {out} is not empty; continue its run with --resume, replace it with "
                              "--overwrite (only a dmlkit run directory is replaced), or pass another --out")
        if not (out / MARKER).is_file():
            raise RunDirError(f"--overwrite refused: {out} does not hold a dmlkit run (no {MARKER} file), and dmlkit "
                              "never deletes files it did not write; pass another --out")


def _check_writable(out: Path) -> None:
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"--out {out}: {existing} is a file, so no directory can be made there; pass another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out}: cannot write to {existing} (permission denied); pass a writable --out")


def start_run_dir(out: Path, *, overwrite: bool) -> None:
    """Create ``out`` with its marker; with ``overwrite``, first remove what a previous run wrote."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (out / MARKER).is_file():
        for name in RUN_ENTRIES:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    if not (out / MARKER).is_file():
        from dmlkit import __version__

        (out / MARKER).write_text(json.dumps({"created_by": "dmlkit", "version": __version__,
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (KeyError, ValueError, TypeError, OverflowError):
        return False
    return True


def _held(out: Path, holder: dict | None) -> bool:
    """A live process holds the lock, and it was taken for this directory (not copied with it)."""
    return holder is not None and holder.get("dir", str(out.resolve())) == str(out.resolve()) and _alive(holder)


def check_lock(out: Path) -> None:
    """RunDirError naming the process if a live one holds ``out``'s lock."""
    holder = _holder(out / LOCK)
    if _held(out, holder) and holder.get("pid") != os.getpid():
        raise RunDirError(f"run directory {out} is in use by process {holder.get('pid')} on {holder.get('host')} "
                          f"(lock file {out / LOCK}); wait for it to end, or stop it, then try again")


class RunLock:
    """One writer per run directory, for the life of a ``with`` block (rank 0 only)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.held = False

    def __enter__(self) -> None:
        if not is_rank_zero():
            return
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "dir": str(self.path.parent.resolve()),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _holder(self.path)
                if _held(self.path.parent, holder):
                    check_lock(self.path.parent)
                    return  # our own lock (a nested run in this process)
                log.warning("taking over the lock of %s left by process %s, which is no longer running (or the "
                            "lock was copied from another directory)", self.path.parent, (holder or {}).get("pid", "?"))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(record)
            self.held = True
            return
        raise RunDirError(f"could not take the lock {self.path}; another process took it first; try again")

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


@contextlib.contextmanager
def interrupt_raises(out: Path, progress: Callable[[], tuple[int, int]]) -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) raises :class:`RunInterrupted` with ``progress()`` =
    ``(epoch, step)``: an ordinary exception that Lightning passes on after its teardown (its own
    KeyboardInterrupt handling would end the process with exit 1 and no word)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the teardown short
        epoch, step = progress()
        raise RunInterrupted(out, epoch, step)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
