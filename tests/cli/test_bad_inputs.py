"""The bad-input table: every row is a distinct bad input to a command; each must exit 1 with one
`Error:` line, no traceback, never exit 3, and leave no output or staging directory behind.

Run in-process (click's CliRunner through the real root group) to keep ~100 rows in seconds.
`len(CASES)` is the figure in the README's Reliability section.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from semedge.cli import cli as root
from tests.runtime.toy_export import build_toy_export, sample_text

# (id, args); {E} export, {P} prompt, {D} data text, {O} output path, {M} tiny model, {X} bad export
CASES = [
    # run: sampling and length options
    ("run-temperature-nan", "run {E} -f {P} --temperature nan"),
    ("run-temperature-inf", "run {E} -f {P} --temperature inf"),
    ("run-temperature-negative", "run {E} -f {P} --temperature -1"),
    ("run-top-p-nan", "run {E} -f {P} --temperature 1 --top-p nan"),
    ("run-top-p-zero", "run {E} -f {P} --top-p 0"),
    ("run-top-p-above-one", "run {E} -f {P} --top-p 1.5"),
    ("run-top-k-negative", "run {E} -f {P} --top-k -1"),
    ("run-max-new-tokens-zero", "run {E} -f {P} --max-new-tokens 0"),
    ("run-max-new-tokens-negative", "run {E} -f {P} --max-new-tokens -5"),
    ("run-max-new-tokens-huge", "run {E} -f {P} --max-new-tokens 1000000000"),
    ("run-ratio-nan", "run {E} -f {P} --ratio nan"),
    ("run-ratio-inf", "run {E} -f {P} --ratio inf"),
    ("run-ratio-minus-inf", "run {E} -f {P} --ratio -inf"),
    ("run-ratio-below-one", "run {E} -f {P} --ratio 0.5"),
    ("run-stop-empty", ["run", "{E}", "-f", "{P}", "--stop", ""]),
    ("run-seed-negative", "run {E} -f {P} --seed -1"),
    ("run-query-blank", ["run", "{E}", "-f", "{P}", "--ratio", "2", "--query", "  "]),
    ("run-prompt-missing", "run {E} -f {O}"),
    ("run-prompt-not-utf8", "run {E} -f {P_BIN}"),
    ("run-prompt-empty", "run {E} -f {P_EMPTY}"),
    ("run-prompt-is-dir", "run {E} -f {E}"),
    ("run-export-missing", "run {O} -f {P}"),
    ("run-export-is-file", "run {P} -f {P}"),
    ("run-provider-bogus", "run {E} -f {P} --provider bogus"),
    ("run-stream-and-json", "run {E} -f {P} --stream --json"),
    ("run-adapter-missing", "run {E} -f {P} --adapter {O}"),
    ("run-adapter-is-file", "run {E} -f {P} --adapter {P}"),
    ("run-manifest-files-list", "run {X:files-list} -f {P}"),
    ("run-manifest-max-context-text", "run {X:max-context-text} -f {P}"),
    ("run-manifest-not-json", "run {X:not-json} -f {P}"),
    ("run-manifest-not-object", "run {X:not-object} -f {P}"),
    ("run-manifest-bad-sha", "run {X:bad-sha} -f {P}"),
    ("run-manifest-files-escape", "run {X:files-escape} -f {P}"),
    ("run-manifest-adapter-escape", "run {X:adapter-escape} -f {P}"),
    ("run-manifest-eos-text", "run {X:eos-text} -f {P}"),
    ("run-manifest-graphs-list", "run {X:graphs-list} -f {P}"),
    ("run-manifest-schema-v9", "run {X:schema-v9} -f {P}"),
    ("run-decode-swapped-unlisted", "run {X:decode-unlisted} -f {P}"),
    ("run-decode-truncated", "run {X:decode-truncated} -f {P}"),
    ("run-extra-graph", "run {X:extra-graph} -f {P}"),
    # profile
    ("profile-ratios-nan", "profile {E} --ratios nan --lengths 16"),
    ("profile-ratios-inf", "profile {E} --ratios inf --lengths 16"),
    ("profile-ratios-below-one", "profile {E} --ratios 0.5 --lengths 16"),
    ("profile-ratios-text", "profile {E} --ratios abc --lengths 16"),
    ("profile-ratios-empty", ["profile", "{E}", "--ratios", "", "--lengths", "16"]),
    ("profile-lengths-tiny", "profile {E} --lengths 4"),
    ("profile-lengths-nan", "profile {E} --lengths nan"),
    ("profile-lengths-negative", "profile {E} --lengths -16"),
    ("profile-runs-zero", "profile {E} --lengths 16 --runs 0"),
    ("profile-warmup-negative", "profile {E} --lengths 16 --warmup -1"),
    ("profile-decode-tokens-zero", "profile {E} --lengths 16 --decode-tokens 0"),
    ("profile-ort-profile-no-trace", "profile {E} --lengths 16 --ort-profile"),
    # calibrate ratio
    ("ratio-nan", "calibrate ratio --data {D} --ratio nan --out {O}"),
    ("ratio-inf", "calibrate ratio --data {D} --ratio inf --out {O}"),
    ("ratio-one", "calibrate ratio --data {D} --ratio 1 --out {O}"),
    ("ratio-held-out-nan", "calibrate ratio --data {D} --ratio 2 --held-out nan --out {O}"),
    ("ratio-held-out-one", "calibrate ratio --data {D} --ratio 2 --held-out 1.5 --out {O}"),
    ("ratio-chunk-tokens-zero", "calibrate ratio --data {D} --ratio 2 --chunk-tokens 0 --out {O}"),
    ("ratio-prompts-zero", "calibrate ratio --data {D} --ratio 2 --prompts 0 --out {O}"),
    ("ratio-out-dir-without-export", "calibrate ratio --data {D} --ratio 2 --out {O} --out-dir {O2}"),
    ("ratio-out-dir-exists", "calibrate ratio --data {D} --ratio 2 --export-dir {E} --out {O} --out-dir {E}"),
    ("ratio-data-missing", "calibrate ratio --data {O2} --ratio 2 --out {O}"),
    # calibrate int8 / fp16
    ("int8-max-ppl-nan", "calibrate int8 {E} {O} --data {D} --max-ppl-increase nan"),
    ("int8-max-ppl-negative", "calibrate int8 {E} {O} --data {D} --max-ppl-increase -1"),
    ("int8-samples-zero", "calibrate int8 {E} {O} --data {D} --samples 0"),
    ("int8-seq-len-negative", "calibrate int8 {E} {O} --data {D} --seq-len -1"),
    ("int8-eval-windows-zero", "calibrate int8 {E} {O} --data {D} --eval-windows 0"),
    ("int8-export-tampered", "calibrate int8 {X:decode-unlisted} {O} --data {D}"),
    ("fp16-min-agreement-nan", "calibrate fp16 {E} {O} --data {D} --min-agreement nan"),
    ("fp16-min-agreement-above-one", "calibrate fp16 {E} {O} --data {D} --min-agreement 1.5"),
    ("fp16-eval-windows-zero", "calibrate fp16 {E} {O} --data {D} --eval-windows 0"),
    ("fp16-export-escape", "calibrate fp16 {X:files-escape} {O} --data {D}"),
    # export
    ("onnx-atol-nan", "export onnx -m {M} {O} --atol nan"),
    ("onnx-atol-negative", "export onnx -m {M} {O} --atol -1"),
    ("onnx-atol-inf", "export onnx -m {M} {O} --atol inf"),
    ("onnx-max-context-zero", "export onnx -m {M} {O} --max-context 0"),
    ("onnx-max-context-negative", "export onnx -m {M} {O} --max-context -5"),
    ("onnx-opset-99", "export onnx -m {M} {O} --opset 99"),
    ("onnx-parity-lengths-text", "export onnx -m {M} {O} --parity-lengths abc"),
    ("onnx-parity-lengths-nan", "export onnx -m {M} {O} --parity-lengths nan"),
    ("onnx-out-exists", "export onnx -m {M} {E}"),
    ("onnx-model-missing", "export onnx -m {O2} {O}"),
    ("trt-workspace-zero", "export trt {E} {O} --workspace 0"),
    ("trt-context-text", "export trt {E} {O} --context abc"),
    ("trt-context-unordered", "export trt {E} {O} --context 5:1:3"),
    ("trt-batch-zero", "export trt {E} {O} --batch 0:0:0"),
    ("trt-export-tampered", "export trt {X:decode-unlisted} {O}"),
    ("triton-max-batch-negative", "export triton {E} {O} --max-batch -1"),
    ("triton-instances-zero", "export triton {E} {O} --instances 0"),
    ("triton-not-an-export", "export triton {D} {O}"),
    ("triton-export-tampered", "export triton {X:decode-unlisted} {O}"),
    ("triton-external-escape", "export triton {X:files-escape} {O}"),
    # compress / eval / train (torch side)
    ("compress-ratio-nan", "compress {P} --model {M} --ratio nan"),
    ("compress-ratio-below-one", "compress {P} --model {M} --ratio 0.5"),
    ("compress-target-tokens-zero", "compress {P} --model {M} --target-tokens 0"),
    ("compress-max-span-zero", "compress {P} --model {M} --max-span 0"),
    ("compress-max-chars-negative", "compress {P} --model {M} --max-chars -1"),
    ("ppl-ratio-nan", "eval ppl --data {D} -m {M} --ratio nan"),
    ("ppl-context-zero", "eval ppl --data {D} -m {M} --context 0"),
    ("ppl-windows-zero", "eval ppl --data {D} -m {M} --windows 0"),
    ("ppl-target-negative", "eval ppl --data {D} -m {M} --target -1"),
    ("passkey-samples-zero", "eval passkey -m {M} --samples 0"),
    ("passkey-ratio-inf", "eval passkey -m {M} --ratio inf"),
    ("train-lr-nan", "train adapter --model {M} --data {D} --out {O} --lr nan"),
    ("train-lr-negative", "train adapter --model {M} --data {D} --out {O} --lr -1"),
    ("train-steps-zero", "train adapter --model {M} --data {D} --out {O} --steps 0"),
    ("train-recency-fraction-two", "train adapter --model {M} --data {D} --out {O} --recency-fraction 2"),
    ("train-ratio-nan", "train adapter --model {M} --data {D} --out {O} --ratio nan"),
]  # fmt: skip


def _bad_export(src, tmp_path, kind):
    out = tmp_path / f"bad-{kind}"
    shutil.copytree(src, out)
    man = out / "manifest.json"
    data = json.loads(man.read_text())
    edits = {
        "files-list": lambda: data.update(files=[]),
        "max-context-text": lambda: data["config"].update(max_context="abc"),
        "bad-sha": lambda: data["files"]["decode.onnx"].update(sha256="nothex"),
        "files-escape": lambda: data["files"].update({"../../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}),
        "adapter-escape": lambda: data["config"].update(adapter="/etc/hostname"),
        "eos-text": lambda: data["config"].update(eos_token_id="eos"),
        "graphs-list": lambda: data.update(graphs=[]),
        "schema-v9": lambda: data.update(schema_version=9),
        "decode-unlisted": lambda: data["files"].pop("decode.onnx"),
        "extra-graph": lambda: shutil.copy(out / "prefill.onnx", out / "extra.onnx"),
    }  # fmt: skip
    if kind == "not-json":
        man.write_text("{not json")
    elif kind == "not-object":
        man.write_text("[1, 2]")
    elif kind == "decode-truncated":
        (out / "decode.onnx").write_bytes(b"\x08")
    else:
        edits[kind]()
        man.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def places(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    toy_export = build_toy_export(tmp / "export", tiny_llama / "tokenizer.json")
    prompt, data = tmp / "prompt.txt", tmp / "data.txt"
    prompt.write_text(sample_text()[:400])
    data.write_text(sample_text())
    (tmp / "bin.txt").write_bytes(b"\xff\xfe bad")
    (tmp / "empty.txt").write_text("  \n")
    return {"E": toy_export, "P": prompt, "D": data, "M": tiny_llama, "tmp": tmp,
            "P_BIN": tmp / "bin.txt", "P_EMPTY": tmp / "empty.txt"}  # fmt: skip


def _args(spec, places, tmp_path):
    parts = spec.split() if isinstance(spec, str) else spec
    out = []
    for p in parts:
        if p.startswith("{X:"):
            out.append(str(_bad_export(places["E"], tmp_path, p[3:-1])))
        elif p in ("{O}", "{O2}"):
            out.append(str(tmp_path / ("out" if p == "{O}" else "out2")))
        elif p.startswith("{") and p.endswith("}"):
            out.append(str(places[p[1:-1]]))
        else:
            out.append(p)
    return out


@pytest.mark.parametrize("case, spec", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(places, tmp_path, case, spec):
    before = {p.name for p in tmp_path.iterdir()}
    res = CliRunner().invoke(root, _args(spec, places, tmp_path), catch_exceptions=True)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[")]
    assert res.exit_code == 1, (res.exit_code, res.stderr, res.stdout, res.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    left = {p.name for p in tmp_path.iterdir()} - before
    assert not {n for n in left if n.startswith(("out", ".out"))}, left


def test_the_table_holds_at_least_60_distinct_bad_inputs():
    assert len({c for c, _ in CASES}) == len(CASES) >= 60
