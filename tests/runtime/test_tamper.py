"""Tampered, escaping and symlinked exports are refused by every loader (runtime, calibration,
Triton, TensorRT engine dirs), naming the file, with nothing read or written outside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semedge.artifacts import load_manifest, write_manifest
from semedge.errors import ArtifactError
from semedge.runtime import Pipeline
from tests.conftest import assert_one_line_error
from tests.runtime.toy_export import build_toy_export, sample_text
from tests.sdk.fs_audit import FsAudit, tree_snapshot

TEXT = sample_text()[:300]


@pytest.fixture(scope="module")
def other_toy(tiny_llama, tmp_path_factory) -> Path:
    """A second valid toy export (other weights): the attacker's replacement graphs."""
    return build_toy_export(
        tmp_path_factory.mktemp("other") / "export", tiny_llama / "tokenizer.json", seed=7
    )


@pytest.fixture
def export(toy_export, tmp_path) -> Path:
    out = tmp_path / "base" / "export"
    shutil.copytree(toy_export, out)
    return out


def _edit_manifest(export: Path, fn) -> None:
    data = json.loads((export / "manifest.json").read_text())
    fn(data)
    (export / "manifest.json").write_text(json.dumps(data))


def _swap_and_unlist(export: Path, other: Path, name: str) -> None:
    shutil.copy(other / name, export / name)
    _edit_manifest(export, lambda d: d["files"].pop(name))


TAMPER = {
    "swap-decode-unlisted": lambda e, o: _swap_and_unlist(e, o, "decode.onnx"),
    "swap-prefill-unlisted": lambda e, o: _swap_and_unlist(e, o, "prefill.onnx"),
    "swap-embed-unlisted": lambda e, o: _swap_and_unlist(e, o, "embed.onnx"),
    "swap-tokenizer-unlisted": lambda e, o: _swap_and_unlist(e, o, "tokenizer.json"),
    "swap-decode-listed": lambda e, o: shutil.copy(o / "decode.onnx", e / "decode.onnx"),
    "drop-decode": lambda e, o: (e / "decode.onnx").unlink(),
    "drop-encoder": lambda e, o: (e / "encoder.onnx").unlink(),
    "unlist-encoder": lambda e, o: _edit_manifest(e, lambda d: d["files"].pop("encoder.onnx")),
    "add-graph": lambda e, o: shutil.copy(o / "decode.onnx", e / "extra.onnx"),
    "add-plan": lambda e, o: (e / "decode.plan").write_bytes(b"plan"),
    "add-external-data": lambda e, o: (e / "decode.onnx.data").write_bytes(b"\0" * 64),
    "truncate-prefill": lambda e, o: (e / "prefill.onnx").write_bytes(
        (e / "prefill.onnx").read_bytes()[:100]
    ),
}
NAMES = {"add-graph": "extra.onnx", "add-plan": "decode.plan", "add-external-data": "decode.onnx.data",
         "drop-encoder": "encoder.onnx", "unlist-encoder": "encoder.onnx"}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_export_is_refused_naming_the_file(export, other_toy, case):
    TAMPER[case](export, other_toy)
    name = NAMES.get(case) or case.split("-")[1] + (".json" if "tokenizer" in case else ".onnx")
    with pytest.raises(ArtifactError, match=rf"{name}.*(not listed|missing|SHA-256)"):
        Pipeline.from_pretrained(export)
    if case != "swap-decode-listed":  # same size: only the hash tells; the rest needs none
        with pytest.raises(ArtifactError, match=name):
            Pipeline.from_pretrained(export, verify=False)


def test_cli_refuses_the_swapped_decode_graph(cli, export, other_toy, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text(TEXT)
    _swap_and_unlist(export, other_toy, "decode.onnx")
    res = cli("run", export, "-f", prompt, "--max-new-tokens", "3", expect_rc=1)
    assert_one_line_error(res)
    assert "decode.onnx" in res.stderr and "not listed" in res.stderr


ESCAPES = {
    "files-key-dotdot": lambda d: d["files"].update(
        {"../../outside.txt": {"sha256": "0" * 64, "bytes": 7}}
    ),
    "files-key-absolute": lambda d: d["files"].update(
        {"/etc/hostname": {"sha256": "0" * 64, "bytes": 7}}
    ),
    "adapter-absolute": lambda d: d["config"].update(adapter="/etc/hostname"),
    "adapter-dotdot": lambda d: d["config"].update(adapter="../outside.txt"),
    "max-context-text": lambda d: d["config"].update(max_context="abc"),
    "files-list": lambda d: d.update(files=[]),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_or_malformed_manifest_reads_nothing_outside(cli, export, tmp_path, case):
    (export.parent / "outside.txt").write_text("secret!")
    _edit_manifest(export, ESCAPES[case])
    before = tree_snapshot(tmp_path, skip=export)
    with FsAudit(allowed=export) as audit, pytest.raises(ArtifactError):
        Pipeline.from_pretrained(export)
    assert audit.outside == [] and tree_snapshot(tmp_path, skip=export) == before
    prompt = tmp_path / "p.txt"
    prompt.write_text(TEXT)
    assert_one_line_error(cli("run", export, "-f", prompt, expect_rc=1))


def test_symlinked_file_with_the_right_hash_is_refused(export, tmp_path):
    """tokenizer.json -> a copy outside: same bytes and hash, but it resolves outside."""
    outside = tmp_path / "tok-outside.json"
    shutil.copy(export / "tokenizer.json", outside)
    (export / "tokenizer.json").unlink()
    (export / "tokenizer.json").symlink_to(outside)
    with FsAudit(allowed=export) as audit, pytest.raises(ArtifactError, match="resolves outside"):
        Pipeline.from_pretrained(export)
    assert audit.outside == []


def _external_data_escape(export: Path, tmp_path: Path) -> None:
    """embed.onnx rewritten to read its table from ../table.bin (outside the export)."""
    import onnx

    model = onnx.load(str(export / "embed.onnx"))
    onnx.save(model, str(export / "embed.onnx"), save_as_external_data=True,
              location="table.bin", size_threshold=0)  # fmt: skip
    model = onnx.load(str(export / "embed.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../table.bin"
    shutil.move(export / "table.bin", export.parent / "table.bin")
    (export / "embed.onnx").write_bytes(model.SerializeToString())
    manifest = load_manifest(export)
    write_manifest(export, manifest)  # a consistent manifest: only the location is hostile


def test_external_data_outside_the_export_is_refused_by_every_reader(export, tmp_path):
    from semedge.calibration.int8 import open_export
    from semedge.export.triton import write_triton_repo

    _external_data_escape(export, tmp_path)
    with FsAudit(allowed=export) as audit:
        with pytest.raises(ArtifactError, match="external data of embed.onnx.*escapes"):
            Pipeline.from_pretrained(export)
        with pytest.raises(ArtifactError, match="escapes"):
            open_export(export)
    assert audit.outside == []
    repo = tmp_path / "repo"
    with pytest.raises(ArtifactError, match="escapes"):
        write_triton_repo(export, repo)
    assert not repo.exists() and not list(tmp_path.glob(".repo.tmp-*"))


def test_calibration_refuses_an_unlisted_swapped_graph(export, other_toy):
    from semedge.calibration.int8 import open_export

    _swap_and_unlist(export, other_toy, "decode.onnx")
    with pytest.raises(ArtifactError, match="decode.onnx.*not listed"):
        open_export(export)


def test_triton_refuses_a_swapped_unlisted_graph(export, other_toy, tmp_path):
    from semedge.export.triton import write_triton_repo

    _swap_and_unlist(export, other_toy, "prefill.onnx")
    with pytest.raises(ArtifactError, match="prefill.onnx.*not listed"):
        write_triton_repo(export, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_stray_notes_do_not_block_a_run(export):
    (export / "NOTES.txt").write_text("deployed 2026-12-01")
    with Pipeline.from_pretrained(export) as pipe:
        assert len(pipe.generate(TEXT, max_new_tokens=2).tokens) == 2
