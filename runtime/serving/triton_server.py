"""Start and stop the tritonserver bundled in the `nvidia-pytriton` wheel (torch-free).

The wheel (`make triton` unpacks it with --no-deps into .venv/triton) holds the server binary, its
libraries and Triton's Python backend with one stub per Python version. As PyTriton does, the
server tree is copied to a scratch directory with the stub for the running Python placed in
`backends/python/`, and the bundled libraries go on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from semedge.errors import BackendUnavailable, InputError

__all__ = ["TritonServer", "find_triton_home", "serve_triton"]

log = logging.getLogger(__name__)

PYTRITON = "nvidia-pytriton==0.7.0"
# The 0.7.0 stubs' pybind11 predates NumPy 2 (string tensors arrive garbled under NumPy 2), so
# `make triton` also unpacks numpy 1.26 here; the stub's interpreter finds it first.
NUMPY1 = "numpy1"
INSTALL_HINT = (f"install it with `make triton` (pip install --no-deps --target .venv/triton "
                f"{PYTRITON}) or point --triton-home/SEMEDGE_TRITON_HOME at such a directory")  # fmt: skip


def _server_dir(home: Path) -> Path:
    return home / "pytriton" / "tritonserver"


def find_triton_home(explicit: Path | None = None) -> Path:
    """The directory holding `pytriton/tritonserver/bin/tritonserver` and `nvidia_pytriton.libs`.

    Looks at `explicit`, $SEMEDGE_TRITON_HOME, an importable pytriton, then <sys.prefix>/triton.

    Raises:
        BackendUnavailable: none of them holds the server.
    """
    from semedge.config import triton_home

    spec = importlib.util.find_spec("pytriton") if explicit is None else None
    found = Path(spec.origin).parents[1] if spec and spec.origin else None
    candidates = [explicit] if explicit is not None else [triton_home(), found]
    candidates += [] if explicit is not None else [Path(sys.prefix) / "triton"]
    for home in candidates:
        if home is not None and (_server_dir(home) / "bin" / "tritonserver").is_file():
            return home
    where = explicit or "SEMEDGE_TRITON_HOME, pytriton, " + str(Path(sys.prefix) / "triton")
    raise BackendUnavailable(f"no tritonserver found in {where}; {INSTALL_HINT}")


def _stage(home: Path, into: Path) -> Path:
    """Copy the server tree without the stubs, and put this Python's stub in backends/python."""
    src = _server_dir(home)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailable(f"{PYTRITON} has no Python-backend stub for Python {version}")
    dest = into / "tritonserver"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, dest / "backends" / "python" / "triton_python_backend_stub")
    return dest


def _env(home: Path) -> dict[str, str]:
    """Bundled libraries and this Python's libpython on the loader path; our site dirs for
    model.py (SEMEDGE_SITE_DIRS), so the stub's interpreter imports semedge and its deps."""
    env = dict(os.environ)
    libs = [str(home / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    libs += [env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    sites = [str(home / NUMPY1)] if (home / NUMPY1).is_dir() else []  # first: see NUMPY1
    sites += [p for p in sys.path if p.endswith("site-packages")] + site.getsitepackages()
    env["SEMEDGE_SITE_DIRS"] = os.pathsep.join(dict.fromkeys(sites))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    from semedge.runtime.serving.server import bind_socket

    sock = bind_socket(host, 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


class TritonServer:
    """The bundled tritonserver on loopback ports; a context manager that stops it by its pid.

    Args:
        repo: a Triton model repository (e.g. `semedge export triton --backend python`).
        host: the address the HTTP, gRPC and metrics endpoints bind.
        http_port, grpc_port, metrics_port: 0 picks free ports.
        home: where nvidia-pytriton is unpacked (find_triton_home when None).
        log_path: the server's stdout/stderr go here (a temp file when None).
    """

    def __init__(self, repo: Path | str, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, home: Path | None = None,
                 log_path: Path | None = None) -> None:  # fmt: skip
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise InputError(f"{self.repo} is not a directory; write one with `semedge export "
                             "triton EXPORT REPO --backend python`")  # fmt: skip
        self.home = find_triton_home(home)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_path, self.proc, self._scratch = log_path, None, None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        """Start the server and wait until /v2/health/ready answers 200.

        Raises:
            BackendUnavailable: the server exited or was not ready within `timeout_s`.
        """
        self._scratch = Path(tempfile.mkdtemp(prefix="semedge-triton-"))
        server = _stage(self.home, self._scratch)
        self.log_path = self.log_path or self._scratch / "tritonserver.log"
        cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repo.resolve()}",
               f"--backend-directory={server / 'backends'}",
               f"--cache-directory={server / 'caches'}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", "--exit-timeout-secs=10"]  # fmt: skip
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=_env(self.home), start_new_session=True)  # fmt: skip
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise BackendUnavailable(f"tritonserver exited ({self.proc.returncode}): "
                                         f"{self._log_tail()}")  # fmt: skip
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        tail = self._log_tail()
        self.stop()
        raise BackendUnavailable(f"tritonserver not ready after {timeout_s:.0f} s: {tail}")

    def _log_tail(self) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        return (errors or lines or ["(empty log)"])[-1][:400]

    def stop(self) -> None:
        """SIGTERM the server (its own process group), SIGKILL after 15 s; remove the scratch."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._scratch is not None:
            keep = self.log_path and Path(self.log_path).is_relative_to(self._scratch)
            if keep and Path(self.log_path).is_file():
                log.debug("tritonserver log: %s", self._log_tail())
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_triton(repo: Path | str, host: str = "127.0.0.1", port: int = 8000,
                 home: Path | None = None) -> None:  # fmt: skip
    """Run the bundled tritonserver on `repo` until SIGINT/SIGTERM, then stop it.

    Raises:
        BackendUnavailable: no tritonserver installed, or it did not start.
        InputError: `repo` is not a directory.
    """
    server = TritonServer(repo, host, http_port=port, home=home)
    stop = {"now": False}

    def _on_signal(signum, frame):
        stop["now"] = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            log.info("tritonserver ready: HTTP %s, gRPC %s:%d, metrics %s:%d (repository %s)",
                     server.url, host, server.grpc_port, host, server.metrics_port, repo)  # fmt: skip
            while not stop["now"] and server.proc.poll() is None:
                time.sleep(0.5)
            if server.proc.poll() is not None and not stop["now"]:
                raise BackendUnavailable(f"tritonserver exited ({server.proc.returncode}): "
                                         f"{server._log_tail()}")  # fmt: skip
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
