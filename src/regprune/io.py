"""Writing results safely: atomic files and directories, writability probes, one writer per output.

Every result regprune writes (a model directory, regprune.json, eval.json, a report, a sweep cell) goes
through this module:

- `atomic_write_text` / `atomic_write_json`: written to a hidden temporary file next to the target and
  renamed over it, so a reader sees the old file or the new one, never half of one.
- `partial_dir` + `publish_dir`: a directory is built under a hidden `.NAME.partial-*` name (with a marker
  file inside), and renamed into place only when complete. `clean_stale_partials` removes what killed runs
  left behind (only directories carrying the marker; anything else is reported, never deleted).
- `check_writable`: before any work, proves that a path can be created (a probe file is created and
  removed in the nearest existing parent), so a read-only directory or a parent that is a file fails in
  seconds, not after an hour of training.
- `OutputLock`: an exclusive lock (`.NAME.lock` next to the output) held from validation to the final
  rename; a second writer to the same output is refused with a clear message at once.

Files and directories are created with the permissions the umask allows (like `mkdir`), not 0700.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import RegpruneError

log = logging.getLogger(__name__)

PARTIAL_MARKER = ".regprune-partial"


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc/self/status); elsewhere by
    setting and restoring it (briefly 0 for this process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fix_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the mode that plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fix_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, with a message, if `path` (a file or directory to be created) could not be written.

    Every existing component of the path must be a directory, and the nearest existing one must accept
    a new file: a probe file is created there and removed at once."""
    path = Path(path).expanduser()
    # The parent: where the lock, the partial directory and the final rename happen (and where a file is
    # created), even when the output itself is an existing empty directory.
    anc = _nearest_existing(path.absolute().parent)
    if not anc.is_dir():
        raise RegpruneError(f"{what} {path}: {anc} is a file, not a directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".regprune-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RegpruneError(f"{what} {path}: cannot write in {anc} ({e.strerror or e}); choose a writable "
                            "location or fix its permissions") from None
    return path


def partial_dir(out: Path) -> Path:
    """A new hidden directory next to `out` where `out` is built; it carries the partial marker."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    _fix_mode(tmp, directory=True)
    (tmp / PARTIAL_MARKER).write_text(f"pid {os.getpid()}: being written by regprune; will be renamed to "
                                      f"{out.name} when complete\n")
    return tmp


def publish_dir(tmp: Path, out: Path) -> Path:
    """Rename a completed partial directory to `out` (which must not exist or be an empty directory)."""
    # Without the marker a kept directory is never removed by clean_stale_partials: it is the user's now.
    (tmp / PARTIAL_MARKER).unlink(missing_ok=True)
    taken = RegpruneError(f"{out} appeared while this run was writing (another program created it); this "
                          f"run's complete result is kept in {tmp}: move it where you want it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise taken
    if out.is_dir():
        out.rmdir()
    try:
        os.rename(tmp, out)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise taken from None
        raise
    return out


def stale_partials(out: Path) -> list[Path]:
    import glob

    return sorted(p for p in out.parent.glob(f".{glob.escape(out.name)}.partial-*") if p.is_dir())


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove the partial directories that killed runs left for `out` (call with the output lock held).

    Only directories carrying regprune's partial marker are removed; others are reported and kept."""
    removed = []
    for p in stale_partials(out) if out.parent.is_dir() else []:
        if (p / PARTIAL_MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s, left by an interrupted regprune run", p)
            removed.append(p)
        else:
            log.warning("%s looks like an interrupted regprune run's leftovers but carries no marker; "
                        "it is kept: remove it yourself if you do not need it", p)
    return removed


class OutputLock:
    """An exclusive, non-blocking lock for one output path: `.NAME.lock` next to it (fcntl.flock).

    The lock dies with its process, so a killed run never blocks the next one. Use as a context manager
    or call acquire() / release()."""

    def __init__(self, out: str | os.PathLike, what: str = "output"):
        self.out = Path(out).expanduser().absolute()
        self.path = self.out.parent / f".{self.out.name}.lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegpruneError(f"{self.what} {self.out}: cannot create {self.out.parent} ({e.strerror or e})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise RegpruneError(f"{self.what} {self.out}: cannot create its lock file {self.path} "
                                    f"({e.strerror or e}); choose a writable location") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                raise RegpruneError(
                    f"another regprune run is writing {self.what} {self.out} ({holder or 'pid unknown'}); wait "
                    "for it to finish or choose another output path") from None
            # The previous holder may have unlinked the file between our open and our lock: retry then.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["atomic_write_text", "atomic_write_json", "check_writable", "partial_dir", "publish_dir",
           "clean_stale_partials", "stale_partials", "OutputLock", "PARTIAL_MARKER"]
