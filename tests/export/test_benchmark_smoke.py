"""benchmarks/export_vs_torch.py in its smoke mode on the tiny Llama: every baseline column runs
(or is skipped with a printed reason); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, *args) -> subprocess.CompletedProcess:
    """Run benchmarks/SCRIPT with ARGS from the repository root."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_export_vs_torch_smoke(tiny_llama, tiny_export, tiny_export_plain, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "export_vs_torch.py"), str(tiny_export),
           "-m", str(tiny_llama), "--smoke", "--threads", "1", "--torch-bf16", "--torch-int8",
           "--openvino", str(tiny_export_plain), "--ov-precision", "fp32",
           "--genai", str(tmp_path / "no-genai-model"), "--json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    names = set(out["backends"]) | set(out["skipped"])
    assert {"torch", "semedge", "torch_bf16", "torch_int8", "genai"} <= names
    assert "openvino_fp32" in out["backends"] or "openvino" in out["skipped"]
    assert "genai" in out["skipped"] and "skipping genai" in res.stderr  # no such model dir
    (row,) = out["prefill"]
    for name in out["backends"]:
        assert row[f"{name}_s"] > 0 and row[f"{name}_gflops"] > 0
    if "openvino_fp32" in out["backends"]:  # the same fp32 model on another engine
        assert row["max_abs_dlogits_openvino_fp32"] < 1e-3
        assert out["decode"]["same_greedy_tokens_openvino_fp32"]
    assert row["max_abs_dlogits_torch_bf16"] < 1.0


def test_long_context_suite_runs_and_refuses_short_filler_in_one_line(tiny_llama, tmp_path):
    script = str(ROOT / "benchmarks" / "long_context_suite.py")
    base = [sys.executable, script, "--model", str(tiny_llama), "--context", "256",
            "--samples", "1", "--tasks", "niah_number", "--methods", "full,truncate"]  # fmt: skip
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([*base, "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["method"] for r in rows} == {"full", "truncate"}
    assert all(r["task"] == "niah_number" and r["context"] == 256 for r in rows)
    again = subprocess.run([*base, "--out", str(out), "--seed", "1"], capture_output=True,
                           text=True, cwd=ROOT)  # fmt: skip
    assert again.returncode == 0, again.stderr  # another seed into the same file is run, once
    seeds = [json.loads(line)["seed"] for line in out.read_text().splitlines()]
    assert seeds.count(0) == len(rows) and seeds.count(1) == len(rows)
    subprocess.run([*base, "--out", str(out), "--seed", "1"], capture_output=True, cwd=ROOT)
    assert len(out.read_text().splitlines()) == 2 * len(rows)  # done: resumed, not repeated
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rep = [sys.executable, script, "--out", str(out), "--report", "--paired", "full,truncate"]
    res = subprocess.run(rep, capture_output=True, text=True, cwd=ROOT)
    want = {(r["seed"], r["sample"]): r["score"] for r in rows if r["method"] == "full"}
    diffs = [want[r["seed"], r["sample"]] - r["score"] for r in rows if r["method"] == "truncate"]
    diff = sum(diffs) / len(diffs)  # one task: the mean over its prompts
    line = next(ln for ln in res.stdout.splitlines() if "full - truncate" in ln)
    assert res.returncode == 0 and line.startswith("256 ") and f"{diff:+.3f} (95 % CI" in line
    other = tmp_path / "labelled.jsonl"  # one method's rows under another name, joined
    cmd = [*base[:-1], "truncate", "--out", str(other), "--label", "truncate_again"]
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT).returncode == 0
    assert {json.loads(ln)["method"] for ln in other.read_text().splitlines()} == {"truncate_again"}
    res = subprocess.run([*rep[:-1], "truncate_again,truncate", "--join", str(other)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert "truncate_again - truncate: +0.000" in res.stdout, res.stdout + res.stderr
    bad = subprocess.run([*base, "--out", str(other), "--label", "x"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and "--label" in bad.stderr  # two methods, one label
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of filler here.\n")
    bad = [*base, "--out", str(tmp_path / "bad.jsonl"), "--data", str(short)]
    res = subprocess.run(bad, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[")]
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "bad.jsonl").exists()


def test_decode_kv_reports_the_window_on_gemma3_only(tiny_export, tiny_export_gemma3, tmp_path):
    out = tmp_path / "kv.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "decode_kv.py"), "--exports",
           f"{tiny_export},{tiny_export_gemma3}", "--contexts", "40,100", "--steps", "2",
           "--json", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    llama, gemma = rows[:2], rows[2:]
    assert [r["local_slots"] for r in rows] == [0, 0, 15, 15]
    assert all(r["ms_per_token"] > 0 for r in rows)
    # tiny Gemma 3: 2 of 6 layers grow with the context, the 4 local ones stay at 15 slots
    grow = gemma[1]["kv_bytes"] / gemma[0]["kv_bytes"]
    assert grow < llama[1]["kv_bytes"] / llama[0]["kv_bytes"]
    bad = subprocess.run([*cmd[:3], str(tmp_path / "missing")], capture_output=True, text=True,
                         cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("Error:")
    assert "Traceback" not in bad.stderr


def test_decode_kv_compares_the_cache_kinds(tiny_export, tmp_path):
    out = tmp_path / "kinds.json"
    args = ["--exports", tiny_export, "--contexts", "40", "--steps", "2"]
    res = _bench("decode_kv.py", *args, "--kv", "auto,ping-pong", "--json", out)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["kv_cache"] for r in rows] == ["in-place", "ping-pong"]
    assert rows[1]["kv_bytes"] == 2 * rows[0]["kv_bytes"] and all(
        r["ms_per_token"] > 0 for r in rows
    )
    bad = _bench("decode_kv.py", *args, "--kv", "paged")
    assert bad.returncode == 1 and bad.stderr.startswith("Error:") and "--kv" in bad.stderr


def test_prefill_chunks_benchmark_runs_and_agrees(tiny_export, tmp_path):
    out = tmp_path / "chunks.json"
    res = _bench("prefill_chunks.py", "--export", tiny_export, "--lengths", 200, "--chunks",
                 "32,64", "--rounds", 1, "--threads", 1, "--json", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["same_next_token"] is True and [c["chunk"] for c in row["chunked"]] == [32, 64]
    assert all(c["seconds"] > 0 for c in row["chunked"]) and row["tokens"] > 64


def test_genai_baseline_script_refuses_an_unknown_precision_before_any_install(tmp_path):
    out = tmp_path / "genai-model"
    cmd = ["sh", str(ROOT / "scripts" / "build_genai_baseline.sh"), "int3", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == "error: precision must be int4, int8 or fp32, got int3"
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing made


def test_stream_threads_benchmark_runs_every_setting(tiny_export, tmp_path):
    out = tmp_path / "streams.json"
    res = _bench("stream_threads.py", "--export", tiny_export, "--settings", "1x1,1x2",
                 "--lengths", "40,80", "--requests", 3, "--new-tokens", 2, "--json", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())
    assert [(r["threads"], r["streams"]) for r in rows] == [(1, 1), (1, 2)]
    assert all(r["requests"] == 3 and r["req_per_s"] > 0 for r in rows)
    bad = _bench("stream_threads.py", "--export", tiny_export, "--settings", "2by1")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("Error: --settings")


def test_top1_agreement_scores_exports_against_the_reference(tiny_export, wikitext_valid, tmp_path):
    script = str(ROOT / "benchmarks" / "top1_agreement.py")
    out = tmp_path / "t1.json"
    cmd = [sys.executable, script, "--reference", str(tiny_export), "--text", str(wikitext_valid),
           "--windows", "2", "--exports", str(tiny_export), "--json", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["tokens"] == 2 * 32 and row["top1"] == 1.0 and row["ppl"] == row["ppl_reference"]
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.\n")
    cmd[cmd.index(str(wikitext_valid))] = str(short)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[")]
    assert res.returncode == 1 and len(lines) == 1 and "longer --quality-data" in lines[0]


def test_prepare_query_cost_runs_every_setting(tiny_export):
    res = _bench("prepare_query_cost.py", "--export", tiny_export, "--context", 512, "--rounds", 1,
                 "--threads", 1)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("prepare, ") and "R=2.4" in lines[0]
    names = [line.split(" min ")[0].strip() for line in lines[1:]]
    assert names == ["no query", "query", "query, window unscored"]
    assert all(float(line.split(" min ")[1].split()[0]) > 0 for line in lines[1:])
    tokens = [int(line.rsplit("encoder tokens ", 1)[1]) for line in lines[1:]]
    assert tokens[1] > tokens[2] > 0  # with a reading order the window is encoded too


def test_prepare_query_cost_compares_two_exports_in_the_same_rounds(tiny_export):
    res = _bench("prepare_query_cost.py", "--export", tiny_export, "--compare", tiny_export,
                 "--context", 512, "--rounds", 1, "--threads", 1)  # fmt: skip
    assert res.returncode == 0, res.stderr
    names = [line.split(" min ")[0].strip() for line in res.stdout.splitlines()[1:]]
    assert [n.split(": ")[0] for n in names] == [
        f"{i} {tiny_export.name}" for i in (1, 1, 1, 2, 2, 2)
    ]
    tokens = [int(line.rsplit("encoder tokens ", 1)[1]) for line in res.stdout.splitlines()[1:]]
    assert tokens[:3] == tokens[3:]  # the same export: the same encoder work
