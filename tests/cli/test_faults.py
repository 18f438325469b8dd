"""Fault injection: SIGTERM / SIGINT / SIGKILL at points inside export and calibration writers
(subprocesses on the tiny model), two writers to one output. Nothing partial is left, nothing is
clobbered, the source is untouched, and no stale staging survives the next run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.runtime.toy_export import sample_text
from tests.sdk.fs_audit import tree_snapshot


def _run_with_fault(argv: list, target: str, nth: int, sig: str = "SIGTERM"):
    """Run `semedge ARGV` where the `nth` call of `target` ("module:attr") signals the process."""
    module, attr = target.split(":")
    script = textwrap.dedent(f"""
        import importlib, os, signal, sys
        mod = importlib.import_module({module!r})
        real, calls = getattr(mod, {attr!r}), [0]
        def fault(*a, **k):
            calls[0] += 1
            if calls[0] == {nth}:
                os.kill(os.getpid(), signal.{sig})
                import time; time.sleep(30)  # the signal lands here
            return real(*a, **k)
        setattr(mod, {attr!r}, fault)
        from semedge.cli import main
        sys.argv = ["semedge", *{[str(a) for a in argv]!r}]
        main()
    """)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} left behind"
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault-data") / "data.txt"
    path.write_text(sample_text() * 2)
    return path


POINTS = {  # point -> (command builder, function hit, which call)
    "export-onnx-mid-tracing": (
        lambda m, e, d, o: ["export", "onnx", "-m", m, o, "--parity-lengths", "7"],
        "semedge.export.onnx_export:_trace", 2,
    ),
    "export-onnx-in-parity-gate": (
        lambda m, e, d, o: ["export", "onnx", "-m", m, o, "--parity-lengths", "7"],
        "semedge.export.parity:check_parity", 1,
    ),
    "triton-mid-copy": (
        lambda m, e, d, o: ["export", "triton", e, o], "semedge.export.triton:_link_or_copy", 2,
    ),
    "triton-before-commit": (
        lambda m, e, d, o: ["export", "triton", e, o], "semedge.staging:_fsync_tree", 1,
    ),
    "fp16-mid-conversion": (
        lambda m, e, d, o: ["calibrate", "fp16", e, o, "--data", d, "--eval-windows", "1",
                            "--eval-context", "16", "--eval-tokens", "4"],
        "semedge.calibration.fp16:fp16_from_fp32", 2,
    ),
    "ratio-out-dir-mid-copy": (
        lambda m, e, d, o: ["calibrate", "ratio", "--data", d, "--ratio", "1.5", "--export-dir", e,
                            "--out", Path(o).parent / "c.json", "--out-dir", o, "--chunk-tokens",
                            "256", "--prompts", "4", "--test-prompts", "2"],
        "shutil:copy2", 2,
    ),
    "precision-mid-candidate": (  # the scratch fp32 export and candidate go too
        lambda m, e, d, o: ["export", "onnx", "-m", m, o, "--precision", "fp16",
                            "--parity-lengths", "7", "--quality-data", d],
        "semedge.calibration.precision:_convert", 1,
    ),
}  # fmt: skip


SLOW = {"export-onnx-in-parity-gate"}  # a full torch export each: one export point stays fast


@pytest.mark.parametrize(
    "point", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in sorted(POINTS)]
)
def test_sigterm_leaves_nothing_partial(tiny_llama, tiny_export, data, tmp_path, point):
    build, target, nth = POINTS[point]
    out = tmp_path / "out"
    source = tree_snapshot(tiny_export)
    res = _run_with_fault(build(tiny_llama, tiny_export, data, out), target, nth)
    assert res.returncode == 143, (res.returncode, res.stderr[-2000:])
    _assert_nothing_left(out)
    assert not (tmp_path / "c.json").exists()
    assert tree_snapshot(tiny_export) == source  # the source export is never touched


def test_sigint_is_exit_130_and_leaves_nothing(tiny_export, tmp_path):
    out = tmp_path / "repo"
    res = _run_with_fault(["export", "triton", tiny_export, out],
                          "semedge.export.triton:_link_or_copy", 2, "SIGINT")  # fmt: skip
    assert res.returncode == 130, res.stderr
    _assert_nothing_left(out)


def test_sigkill_staging_is_swept_by_the_next_run(cli, tiny_export, tmp_path):
    out = tmp_path / "repo"
    res = _run_with_fault(["export", "triton", tiny_export, out],
                          "semedge.export.triton:_link_or_copy", 2, "SIGKILL")  # fmt: skip
    assert res.returncode == -9
    assert not out.exists() and len(list(tmp_path.glob(".repo.tmp-*"))) == 1  # the stale stage
    cli("export", "triton", tiny_export, out)
    assert (out / "decode" / "config.pbtxt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_two_cli_writers_one_output_one_wins_whole(cli, tiny_export, tmp_path):
    out, results = tmp_path / "repo", []
    start = threading.Barrier(2)

    def write():
        start.wait()
        proc = subprocess.run([sys.executable, "-m", "semedge", "export", "triton", str(tiny_export),
                               str(out)], capture_output=True, text=True)  # fmt: skip
        results.append(proc)

    ts = [threading.Thread(target=write) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rcs = sorted(p.returncode for p in results)
    assert rcs == [0, 1], [(p.returncode, p.stderr) for p in results]
    loser = next(p for p in results if p.returncode == 1)
    assert "already exists" in loser.stderr or "appeared while writing" in loser.stderr
    assert {p.name for p in out.iterdir()} >= {"decode", "prefill", "embed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_enospc_while_writing_is_one_line_exit_1_and_leaves_nothing(tiny_export, tmp_path):
    """A full disk during `export triton`: the copies land, then fsync reports ENOSPC (as
    filesystems with delayed allocation do)."""
    out = tmp_path / "repo"
    script = textwrap.dedent(f"""
        import errno, os, sys
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync = fsync
        from semedge.cli import main
        sys.argv = ["semedge", "export", "triton", {str(tiny_export)!r}, {str(out)!r}]
        main()
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[")]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "No space left on device" in lines[0] and "Traceback" not in res.stderr
    _assert_nothing_left(out)
