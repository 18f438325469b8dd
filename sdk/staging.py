"""Writes that never clobber: staged directories and atomic single files (torch-free).

A directory is staged in `mkdtemp(dir=final.parent)`, fsynced, and committed with a rename that
cannot replace anything (renameat2 RENAME_NOREPLACE, else a lock plus a re-check); an output that
appeared while we worked is an error, never something we delete. Re-exported by semedge.artifacts.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semedge.errors import ArtifactError

__all__ = ["staged_dir", "scratch_dir", "atomic_write_bytes", "atomic_write_text", "sweep_stale"]

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
_TMP, _OLD = ".tmp-", ".old-"  # staging names: .NAME.tmp-PID-RANDOM, .NAME.old-PID-RANDOM


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _prefix(final: Path, kind: str) -> str:
    return f".{final.name}{kind}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(final: Path | str) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID-*` left next to `final` by dead processes.

    Returns:
        The paths removed.
    """
    final = Path(final)
    removed = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        for kind in (_TMP, _OLD):
            head = f".{final.name}{kind}"
            pid = p.name[len(head) :].split("-", 1)[0] if p.name.startswith(head) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    _remove_stale(p, final, kind)
                except OSError as err:  # not ours to remove (permissions): leave it
                    log.warning("cannot remove stale staging %s: %s", p, _why(err))
                    continue
                removed.append(p)
    return removed


def _remove_stale(p: Path, final: Path, kind: str) -> None:
    previous = p / "previous"  # died between the two renames of an overwrite: put it back
    if kind == _OLD and previous.is_dir() and not os.path.lexists(final):
        os.rename(previous, final)
        log.warning("restored %s from an interrupted overwrite", final)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
    log.info("removed stale staging %s", p)


def _fsync_path(path: Path | str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(dirpath, name)):
                _fsync_path(os.path.join(dirpath, name))
        _fsync_path(dirpath, directory=True)


_libc = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST if `dst` exists (renameat2; plain rename elsewhere,
    where the caller holds the lock and has re-checked)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 (glibc >= 2.28)
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        at_fdcwd, noreplace = -100, 1
        if _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: this filesystem lacks it
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself (no lock file left behind); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (default action: die without cleanup) into SystemExit(143) meanwhile, so the
    stage is removed; SIGINT already raises KeyboardInterrupt. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):  # someone else handles it: leave theirs
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A private working directory `parent/PREFIX*`, removed on exit, on an error, on Ctrl-C
    and on SIGTERM (turned into SystemExit meanwhile), so an interrupted job leaves nothing."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        with _signals_raise():
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGTERM/SIGINT meanwhile (main thread); they are delivered, and act, right after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit(tmp: Path, final: Path, before: tuple[int, int] | None, overwrite: bool) -> None:
    """Rename `tmp` to `final` under the parent's lock; replace only what was there at the start."""
    parent = final.parent
    with _signals_held(), _dir_lock(parent):  # a signal between the two renames would lose both
        now = _identity(final)
        if now != before:
            raise ArtifactError(
                f"output appeared while writing: {final} was "
                f"{'created' if before is None else 'replaced'} by someone else; "
                "nothing was overwritten, rerun with another path"
            )
        if now is None:
            _rename_noreplace(tmp, final)
        else:  # --overwrite: move the old one aside, put the new one in, then delete the old
            old = Path(tempfile.mkdtemp(prefix=_prefix(final, _OLD), dir=parent))
            os.rename(final, old / "previous")
            try:
                _rename_noreplace(tmp, final)
            except OSError:
                os.rename(old / "previous", final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        os.chmod(final, 0o777 & ~_UMASK)
        _fsync_path(parent, directory=True)


@contextmanager
def staged_dir(final: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp sibling of `final`; commit it to `final` only if the block succeeds.

    Args:
        final: the directory to create.
        overwrite: replace `final` if it exists now (a directory only). Whatever appears at
            `final` while the block runs is never replaced: the commit fails instead.

    Raises:
        ArtifactError: `final` exists (and not `overwrite`), appeared while writing, is not a
            directory, or cannot be written (disk full, permissions); the stage is removed.
    """
    final = Path(final)
    sweep_stale(final)  # first: it may restore an output an interrupted overwrite moved aside
    before = _identity(final)
    if before is not None:
        if not overwrite:
            raise ArtifactError(f"{final} already exists; choose another path or pass --overwrite")
        if final.is_symlink() or not final.is_dir():
            raise ArtifactError(
                f"{final} is not a directory; --overwrite replaces directories only"
            )
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(final, _TMP), dir=final.parent))
    except OSError as err:
        raise ArtifactError(f"cannot write to {final.parent}: {_why(err)}") from err
    with _signals_raise():
        try:
            yield tmp
            _fsync_tree(tmp)
            _commit(tmp, final, before, overwrite)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ArtifactError(f"cannot write {final}: {_why(err)}; nothing was written") from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path`: a mkstemp sibling (never a predictable name), fsync, rename.

    Raises:
        ArtifactError: the directory cannot be written (disk full, permissions, a directory there).
    """
    path = Path(path)
    tmp: str | None = None
    with _signals_raise():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_prefix(path, _TMP), dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)  # replaces a symlink at `path`, never the file it points to
            tmp = None
            _fsync_path(path.parent, directory=True)
        except OSError as err:
            raise ArtifactError(f"cannot write {path}: {_why(err)}") from err
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (see atomic_write_bytes)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
