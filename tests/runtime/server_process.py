"""Start `semedge serve ...` as a subprocess on a free loopback port; stop it by its own pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServerProcess:
    """`semedge ARGS` until its stderr shows `pattern` (a URL with the bound port), then stop.

    Bounded: startup waits `timeout_s`; stop sends SIGTERM, then SIGKILL after 30 s.
    """

    def __init__(self, args: list, log_path: Path, pattern: str, timeout_s: float = 180.0):
        self.args, self.log_path, self.pattern, self.timeout_s = args, log_path, pattern, timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "semedge", *map(str, self.args)]
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            match = re.search(self.pattern, self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()[-2000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not up after {self.timeout_s} s: {self.log()[-2000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def post_raw(url: str, data: bytes, timeout: float = 60.0) -> tuple[int, dict]:
    """POST raw bytes as JSON; (status, decoded JSON body), errors included."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
