"""Optimum baseline: the same model exported by `optimum-cli export onnx --task
text-generation-with-past`, run through ONNX Runtime the same way as semedge's export.

Library part (benchmarks/export_vs_torch.py --optimum imports `optimum_runner`): runners with
`name`, `prefill(ids) -> (last logits, past)`, `decode(token, position, past)`. Standalone
usage (semedge and Optimum side by side):

    python benchmarks/optimum_baseline.py --semedge EXPORT_DIR [--lengths 512,1024,2048]
        [--decode-tokens 32] [--repeats 2] [--threads N]

Needs optimum-onnx 0.1.0 (optimum 2.1, transformers < 4.58); the export is cached in
~/.cache/semedge/bench/optimum-<model>.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "semedge"
SMOLLM2_DIR = CACHE / "smollm2-135m-instruct-q4_1"  # semedge.models.loader's converted HF dir
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "test.txt"


def optimum_export(model_dir: Path = SMOLLM2_DIR, out_dir: Path | None = None) -> Path:
    """Export `model_dir` with optimum-cli (once; cached) and return the model.onnx path."""
    out_dir = out_dir or CACHE / "bench" / f"optimum-{model_dir.name}"
    onnx_path = out_dir / "model.onnx"
    if onnx_path.is_file():
        return onnx_path
    cli = shutil.which("optimum-cli") or str(Path(sys.executable).with_name("optimum-cli"))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        cli,
        "export",
        "onnx",
        "-m",
        str(model_dir),
        "--task",
        "text-generation-with-past",
        str(tmp),
    ]
    subprocess.run(cmd, check=True, env={"HF_HUB_OFFLINE": "1", **_env()})
    tmp.replace(out_dir)
    return onnx_path


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _session(path: Path, threads: int | None):
    from semedge.runtime.backends.ort import session_from_path  # the runtime's settings

    return session_from_path(path, ["CPUExecutionProvider"], threads)


def _kv_spec(sess) -> tuple[list[str], int, int, np.dtype]:
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    n_kv, head_dim = past[0].shape[1], past[0].shape[3]
    dtype = np.float16 if "float16" in past[0].type else np.float32
    return [p.name for p in past], int(n_kv), int(head_dim), dtype


class OptimumRunner:
    """Optimum's decoder-with-past graph: prefill = an empty past, decode = one token."""

    name = "optimum"

    def __init__(self, onnx_path: Path, threads: int | None = None) -> None:
        self.sess = _session(onnx_path, threads)
        self.past, self.n_kv, self.head_dim, self.dtype = _kv_spec(self.sess)
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def _run(self, ids: np.ndarray, start: int, past: dict[str, np.ndarray]):
        t = ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, start + t), np.int64),
            "position_ids": np.arange(start, start + t, dtype=np.int64)[None],
            **past,
        }
        out = dict(zip(self.outputs, self.sess.run(None, feeds), strict=True))
        presents = {n: out[n.replace("past_key_values", "present")] for n in self.past}
        return out["logits"][:, -1], presents

    def prefill(self, ids: np.ndarray):
        empty = np.zeros((1, self.n_kv, 0, self.head_dim), self.dtype)
        return self._run(ids, 0, {n: empty for n in self.past})

    def decode(self, token: int, position: int, past: dict[str, np.ndarray]):
        return self._run(np.array([[token]], np.int64), position, past)


class SemedgeRunner:
    """semedge's export: embed.onnx + prefill.onnx, then decode.onnx (same ORT options)."""

    name = "semedge"

    def __init__(self, export_dir: Path, threads: int | None = None) -> None:
        self.embed = _session(export_dir / "embed.onnx", threads)
        self.pre = _session(export_dir / "prefill.onnx", threads)
        self.dec = _session(export_dir / "decode.onnx", threads)
        self.past = [i.name for i in self.dec.get_inputs() if i.name.startswith("past_key_values.")]
        self.pre_out = [o.name for o in self.pre.get_outputs()]
        self.dec_out = [o.name for o in self.dec.get_outputs()]

    def _presents(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: out[n.replace("past_key_values", "present")] for n in self.past}

    def prefill(self, ids: np.ndarray):
        (embeds,) = self.embed.run(None, {"input_ids": ids})
        t = ids.shape[1]
        feeds = {"inputs_embeds": embeds, "position_ids": np.arange(t, dtype=np.int64)[None],
                 "attention_mask": np.ones((1, t), np.int64)}  # fmt: skip
        out = dict(zip(self.pre_out, self.pre.run(None, feeds), strict=True))
        return out["logits"][:, -1], self._presents(out)

    def decode(self, token: int, position: int, past: dict[str, np.ndarray]):
        feeds = {"input_ids": np.array([[token]], np.int64),
                 "position_ids": np.array([[position]], np.int64),
                 "attention_mask": np.ones((1, position + 1), np.int64), **past}  # fmt: skip
        out = dict(zip(self.dec_out, self.dec.run(None, feeds), strict=True))
        return out["logits"][:, -1], self._presents(out)


def optimum_runner(model_dir: Path | None = None, threads: int | None = None) -> OptimumRunner:
    """The Optimum baseline with the runner interface of benchmarks/export_vs_torch.py."""
    return OptimumRunner(optimum_export(model_dir or SMOLLM2_DIR), threads)


def time_prefill(runner, ids: np.ndarray, repeats: int) -> float:
    """Best-of-`repeats` wall time (s) of one prefill, after one warm-up."""
    runner.prefill(ids)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.prefill(ids)
        best = min(best, time.perf_counter() - t0)
    return best


def decode_tokens_per_s(runner, ids: np.ndarray, steps: int) -> tuple[float, list[int]]:
    """Greedy decode `steps` tokens after prefilling `ids`; returns (tokens/s, tokens)."""
    logits, past = runner.prefill(ids)
    token, tokens = int(logits[0].argmax()), []
    t0 = time.perf_counter()
    for step in range(steps):
        logits, past = runner.decode(token, ids.shape[1] + step, past)
        tokens.append(token)
        token = int(logits[0].argmax())
    return steps / (time.perf_counter() - t0), tokens


def compare_last_logits(a, b, ids: np.ndarray) -> float:
    """max |Δ| between two runners' last-position prefill logits."""
    return float(
        np.abs(a.prefill(ids)[0].astype(np.float32) - b.prefill(ids)[0].astype(np.float32)).max()
    )


def wikitext_ids(tokenizer_json: Path, n: int) -> np.ndarray:
    """The first `n` token ids of WikiText-2 test as a (1, n) int64 array."""
    from tokenizers import Tokenizer

    text = WIKITEXT.read_text(encoding="utf-8")[: n * 12]
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text).ids[:n]
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} tokens of text; need {n}")
    return np.asarray(ids, np.int64)[None]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--semedge", type=Path, required=True, help="a semedge export of the model")
    ap.add_argument("--model-dir", type=Path, default=SMOLLM2_DIR)
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--atol", type=float, default=1e-3, help="logits agreement budget (fp32)")
    a = ap.parse_args(argv)
    lengths = [int(x) for x in a.lengths.split(",")]
    opt = OptimumRunner(optimum_export(a.model_dir), a.threads)
    sem = SemedgeRunner(a.semedge, a.threads)
    ids = wikitext_ids(a.model_dir / "tokenizer.json", max(lengths))
    print(
        f"{'case':14s} {'optimum':>10s} {'semedge':>10s} {'semedge speedup':>16s} {'max|Δlogits|':>13s}"
    )
    for n in lengths:
        x = ids[:, :n]
        t_opt, t_sem = time_prefill(opt, x, a.repeats), time_prefill(sem, x, a.repeats)
        delta = compare_last_logits(opt, sem, x)
        flag = "" if delta <= a.atol else f"  > atol {a.atol}"
        print(
            f"prefill {n:<6d} {t_opt:9.3f}s {t_sem:9.3f}s {t_opt / t_sem:15.2f}x {delta:13.2e}{flag}",
            flush=True,
        )
    x = ids[:, : lengths[0]]
    (tps_opt, tok_opt), (tps_sem, tok_sem) = (
        decode_tokens_per_s(r, x, a.decode_tokens) for r in (opt, sem)
    )
    same = sum(p == q for p, q in zip(tok_opt, tok_sem, strict=True))
    print(f"decode tok/s   {tps_opt:9.1f}  {tps_sem:9.1f}  {tps_sem / tps_opt:15.2f}x "
          f"(greedy tokens equal: {same}/{len(tok_opt)}, after {lengths[0]} prompt tokens)")  # fmt: skip


if __name__ == "__main__":
    main()
