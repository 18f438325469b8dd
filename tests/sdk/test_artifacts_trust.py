"""Artifacts users can trust: confinement, manifest schema (hypothesis fuzz), safe writes
(no clobber, no symlink following, ENOSPC, concurrent writers, stale staging, signals)."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semedge import staging
from semedge.artifacts import (
    Manifest,
    atomic_write_bytes,
    confined,
    load_manifest,
    onnx_external_locations,
    staged_dir,
    sweep_stale,
    verify_manifest,
    write_manifest,
)
from semedge.errors import ArtifactError
from tests.sdk.fs_audit import FsAudit, tree_snapshot


# ------------------------------------------------------------------ confinement
@pytest.mark.parametrize(
    "rel",
    ["/etc/passwd", "../x", "a/../../x", "a/..", "..", "", " ", ".", "C:\\x", "C:x", "\\\\srv\\s\\x",
     "..\\x", "a\x00b", 5, None, ["a"]],
)  # fmt: skip
def test_confined_refuses_escaping_names(tmp_path, rel):
    with pytest.raises(ArtifactError, match="refus|not a relative file name"):
        confined(tmp_path, rel)


def test_confined_follows_symlinks_only_inside(tmp_path):
    root, outside = tmp_path / "art", tmp_path / "outside.txt"
    (root / "sub").mkdir(parents=True)
    outside.write_text("secret")
    (root / "in.txt").write_text("ok")
    (root / "link_in").symlink_to(root / "in.txt")
    (root / "link_out").symlink_to(outside)
    (root / "sub" / "dir_out").symlink_to(tmp_path)
    assert confined(root, "sub/new.bin") == root / "sub" / "new.bin"
    assert confined(root, "link_in") == root / "link_in"
    for rel in ("link_out", "sub/dir_out/outside.txt"):
        with pytest.raises(ArtifactError, match="resolves outside"):
            confined(root, rel)


# ------------------------------------------------------------------ manifest schema fuzz
def _good_manifest(root: Path) -> dict:
    (root / "a.onnx").write_bytes(b"")  # an empty protobuf is a valid (empty) ModelProto
    write_manifest(root, Manifest(format="semedge-export", config={"max_context": 64}))
    return json.loads((root / "manifest.json").read_text())


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["../../etc/passwd", "/etc/hostname", "a.onnx", "0" * 64]),
)  # fmt: skip
json_value = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=8,
)  # fmt: skip
PATHS = [
    "format",
    "schema_version",
    "files",
    "graphs",
    "config",
    "created_by",
    "engines",
    "files/a.onnx",
    "files/a.onnx/sha256",
    "files/a.onnx/bytes",
    "files/../x.onnx",
    "config/max_context",
    "config/eos_token_id",
    "config/adapter",
    "config/compression",
    "engines/prefill",
    "engines/prefill/file",
    "graphs/decode",
    "graphs/decode/inputs",
]


def _set(data: dict, path: str, value) -> None:
    *parents, leaf = path.split("/") if not path.startswith("files/../") else ["files", path[6:]]
    for key in parents:
        nxt = data.get(key) if isinstance(data, dict) else None
        if not isinstance(nxt, dict):
            nxt = data[key] = {}
        data = nxt
    data[leaf] = value


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mutations=st.lists(st.tuples(st.sampled_from(PATHS), json_value), min_size=1, max_size=4),
    drop=st.lists(st.sampled_from(["format", "schema_version", "files", "config"]), max_size=2),
)  # fmt: skip
def test_fuzzed_manifests_are_one_line_artifact_errors(tmp_path_factory, mutations, drop):
    """Any manifest: load + verify either pass or raise ArtifactError (never another type), and
    nothing outside the artifact directory is opened or changed."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "art"
    root.mkdir()
    (base / "outside.bin").write_bytes(b"outside")
    data = _good_manifest(root)
    for path, value in mutations:
        _set(data, path, value)
    for key in drop:
        data.pop(key, None)
    (root / "manifest.json").write_text(json.dumps(data))
    before = tree_snapshot(base, skip=root)
    with FsAudit(allowed=root) as audit:
        try:
            verify_manifest(root, load_manifest(root))
        except ArtifactError as err:
            assert "\n" not in str(err)
    assert audit.outside == [], audit.outside
    assert tree_snapshot(base, skip=root) == before


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"files": []}, "'files' must be an object"),
        ({"config": {"max_context": "abc"}}, "config.max_context must be a positive integer"),
        ({"config": {"max_context": 0}}, "config.max_context must be a positive integer"),
        ({"config": {"eos_token_id": "x"}}, "eos_token_id"),
        ({"config": {"hidden_peak": -1.0}}, "config.hidden_peak must be a finite number"),
        ({"config": {"hidden_peak": "1e5"}}, "config.hidden_peak must be a finite number"),
        ({"config": {"adapter": "/etc/hostname"}}, "escapes"),
        ({"files": {"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}, "escapes"),
        ({"files": {"a.onnx": {"sha256": "zz", "bytes": 0}}}, "64 hex digits"),
        ({"files": {"a.onnx": {"sha256": "0" * 64, "bytes": -1}}}, "integer >= 0"),
        ({"graphs": []}, "'graphs' must be an object"),
        ({"engines": {"prefill": {"file": "../p.plan"}}}, "escapes"),
        ({"format": 3}, "format"),
        ({"schema_version": "1"}, "schema_version"),
    ],
)
def test_malformed_manifest_names_the_field(tmp_path, patch, match):
    data = {**_good_manifest(tmp_path), **patch}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match):
        load_manifest(tmp_path)


def test_manifest_not_an_object_and_deeply_nested(tmp_path):
    for text in ("[]", "3", '"x"', "[" * 100_000 + "]" * 100_000):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(ArtifactError):
            load_manifest(tmp_path)


def test_unlisted_loadable_files_are_refused_other_files_are_not(tmp_path):
    _good_manifest(tmp_path)
    (tmp_path / "notes.txt").write_text("a user's note")
    verify_manifest(tmp_path)
    for name in ("decode.onnx", "sub/x.plan", "tokenizer.json", "w.data"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ArtifactError, match=f"{Path(name).name} is not listed"):
            verify_manifest(tmp_path)
        (tmp_path / name).unlink()


def test_write_manifest_refuses_symlinks(tmp_path):
    (tmp_path / "x").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="symlink"):
        write_manifest(tmp_path, Manifest(format="semedge-export"))


def test_external_locations_match_the_onnx_package(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((64, 64), np.float32), n) for n in ("W", "V")]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits,
    )  # fmt: skip
    model = helper.make_model(g)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)  # fmt: skip
    assert onnx_external_locations(tmp_path / "m.onnx") == {"w.bin"}
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ArtifactError, match="not a valid ONNX"):
        onnx_external_locations(tmp_path / "junk.onnx")


# ------------------------------------------------------------------ safe writes
def test_atomic_write_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old predictable names
        (tmp_path / f".out.json.tmp-{pid}").symlink_to(victim)
    atomic_write_bytes(tmp_path / "out.json", b"new")
    assert victim.read_text() == "precious" and (tmp_path / "out.json").read_bytes() == b"new"
    link = tmp_path / "link.json"  # writing onto a symlink replaces the link, not its target
    link.symlink_to(victim)
    atomic_write_bytes(link, b"x")
    assert victim.read_text() == "precious" and not link.is_symlink()


def test_atomic_write_enospc_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "cache.bin"
    path.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging.os, "fsync", full)
    with pytest.raises(ArtifactError, match="No space left on device"):
        atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "cache.bin"
    ]


def test_staged_dir_enospc_mid_write_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = os.write

    def write(fd, data):  # the second write fails as a full disk does
        write.calls += 1
        if write.calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    write.calls = 0
    with pytest.raises(ArtifactError, match="No space left on device; nothing was written"):
        with staged_dir(out) as tmp:
            monkeypatch.setattr(os, "write", write)
            for i in range(3):
                fd = os.open(tmp / f"f{i}", os.O_WRONLY | os.O_CREAT)
                try:
                    os.write(fd, b"x" * 10)
                finally:
                    os.close(fd)
    assert list(tmp_path.iterdir()) == []


def test_output_that_appears_while_writing_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="output appeared while writing"):
        with staged_dir(out) as tmp:
            (tmp / "mine").write_text("new")
            out.mkdir()  # someone else's (empty!) directory: plain rename would replace it
            (out / "theirs").write_text("keep")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_refuses_a_directory_replaced_meanwhile(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArtifactError, match="output appeared while writing"):
        with staged_dir(out, overwrite=True) as tmp:
            (tmp / "mine").write_text("new")
            os.rename(out, tmp_path / "moved")
            out.mkdir()
            (out / "theirs").write_text("keep")
    assert [p.name for p in out.iterdir()] == ["theirs"]


def test_overwrite_replaces_only_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with staged_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
        assert (out / "old").exists()  # the old output stays until the new one is complete
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["new"]


def test_two_writers_one_output_first_wins_second_errors(tmp_path):
    out, barrier, results = tmp_path / "out", threading.Barrier(2), {}

    def writer(name):
        try:
            with staged_dir(out) as tmp:
                (tmp / "who").write_text(name)
                barrier.wait()  # both are staged before either commits
                if name == "b":
                    done_a.wait()
            results[name] = "ok"
        except ArtifactError as err:
            results[name] = str(err)

    done_a = threading.Event()
    ta = threading.Thread(target=lambda: (writer("a"), done_a.set()))
    tb = threading.Thread(target=writer, args=("b",))
    ta.start(), tb.start()
    ta.join(), tb.join()
    assert results["a"] == "ok" and "output appeared while writing" in results["b"]
    assert (out / "who").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_staging_of_dead_processes_is_swept(tmp_path):
    out = tmp_path / "out"
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = [tmp_path / f".out.tmp-{dead}-abc", tmp_path / f".out.old-{dead}-def"]
    for p in stale:
        p.mkdir()
        (p / "half.onnx").write_bytes(b"half")
    live = tmp_path / f".out.tmp-{os.getppid()}-xyz"  # a running writer's stage stays
    live.mkdir()
    with staged_dir(out) as tmp:
        (tmp / "f").write_text("x")
    assert not any(p.exists() for p in stale) and live.exists()
    assert sweep_stale(out) == []


def test_failed_block_removes_the_stage(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_staging_cleans_up(tmp_path):
    from tests.conftest import run_python

    code = (
        "import os, signal, pathlib\nfrom semedge.artifacts import staged_dir\n"
        f"with staged_dir(pathlib.Path({str(tmp_path / 'out')!r})) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    import time; time.sleep(5)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux")
def test_rename_noreplace_refuses_an_empty_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        staging._rename_noreplace(tmp_path / "a", tmp_path / "b")


def test_an_interrupted_overwrite_is_restored_by_the_next_writer(tmp_path):
    out, dead = tmp_path / "out", 2**22 + 777
    aside = tmp_path / f".out.old-{dead}-abc" / "previous"  # killed after moving the old aside
    aside.mkdir(parents=True)
    (aside / "model.onnx").write_text("the user's export")
    with pytest.raises(ArtifactError, match="already exists"):
        with staged_dir(out):
            pass
    assert (out / "model.onnx").read_text() == "the user's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
