"""Watch what a block of code opens (sys.addaudithook) and what changes on disk: the proof that
malformed or hostile artifacts make semedge read or write nothing outside their directory."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

_ACTIVE: list[FsAudit] = []
_EVENTS = {"open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.mkdir", "os.symlink",
           "shutil.copyfile", "shutil.rmtree", "os.chmod", "os.truncate"}  # fmt: skip
_TWO_PATHS = {"os.rename", "os.symlink", "shutil.copyfile"}
_installed = False
_SYSTEM = ("/proc/", "/sys/", "/dev/", "/etc/os-release", "/usr/lib/os-release")  # runtime probes
_REPO = Path(__file__).resolve().parents[2]
_CODE = ("sdk", "runtime", "export", "calibration")
_lock = threading.Lock()


def _hook(event: str, args: tuple) -> None:
    if not _ACTIVE or event not in _EVENTS:
        return
    for arg in args[: 2 if event in _TWO_PATHS else 1]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            for audit in list(_ACTIVE):
                audit.record(event, os.fsdecode(arg))


class FsAudit:
    """Records every path touched inside `allowed`'s complement while active (this thread's
    activity and any other: the tests using it run the code under test in this thread)."""

    def __init__(self, allowed: Path | str, ignore: tuple[str, ...] = ()) -> None:
        self.allowed = os.path.realpath(allowed)
        code = [p for p in sys.path if p and os.path.isdir(p)] + [str(_REPO / d) for d in _CODE]
        self.ignore = tuple(
            os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, *code, *ignore)
        )  # imports (lazy ones too) read the interpreter's and the package's own files
        self.outside: list[tuple[str, str]] = []

    def record(self, event: str, path: str) -> None:
        real = os.path.realpath(path)
        if real == self.allowed or real.startswith(self.allowed + os.sep):
            return
        if real.startswith(self.ignore) or real.startswith(_SYSTEM):
            return
        self.outside.append((event, real))

    def __enter__(self) -> FsAudit:
        global _installed
        with _lock:
            if not _installed:
                sys.addaudithook(_hook)
                _installed = True
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)


def tree_snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of everything under `root` (but `skip`)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if skip is not None and Path(dirpath).resolve() == Path(skip).resolve():
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(dirpath) / name
            if skip is not None and p.resolve() == Path(skip).resolve():
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
