"""Load test: N concurrent clients x M requests of mixed lengths and ratios against `semedge serve`
(OpenAI API, streamed) or `semedge serve --triton` (the decoupled model's generate_stream).

Loopback only and bounded: the server is started here on a free port and stopped by its pid;
each run stops issuing requests after --max-seconds. Every answer is checked against
`Pipeline.generate` run in this process before the load (greedy), so "wrong" counts real drift.

    python benchmarks/load_test.py --export DIR [--target semedge,triton] [--clients 1,16]
        [--requests 200] [--lengths 128,512,2048] [--ratios none,2.4] [--new-tokens 8,16,32]
        [--max-batch 8] [--workers 1] [--max-batch-positions 8192] [--max-seconds 600] [--json OUT]

Reports per run: throughput (req/s, generated tok/s), p50/p90/p99 latency and time to first token,
errors, wrong outputs, and the server's RSS after warm-up and at the end (tritonserver: with its
Python-backend stubs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "test.txt"
REST_S = 3.0  # > the heap trimmer's 2 s interval: RSS "at rest" is read after this


@dataclass(frozen=True)
class Request:
    prompt: str
    new_tokens: int
    ratio: float | None
    tokens: int  # prompt length in tokens
    want: str = ""  # Pipeline.generate's text


@dataclass
class RunStats:
    target: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    generated: int = 0
    errors: int = 0
    wrong: int = 0
    seconds: float = 0.0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    rss_timeline_mb: list = field(default_factory=list)  # [seconds into the run, MB]
    by_ratio: dict = field(default_factory=dict)  # ratio -> latencies of those requests

    def to_dict(self) -> dict:
        def pct(xs: list[float], p: float) -> float | None:
            if not xs:
                return None
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))], 4)

        n = len(self.latencies)
        return {
            "target": self.target, "clients": self.clients, "requests": n + self.errors,
            "ok": n, "errors": self.errors, "wrong": self.wrong, "seconds": round(self.seconds, 2),
            "req_per_s": round(n / self.seconds, 3) if self.seconds else None,
            "gen_tok_per_s": round(self.generated / self.seconds, 2) if self.seconds else None,
            "p50_s": pct(self.latencies, 50), "p90_s": pct(self.latencies, 90),
            "p99_s": pct(self.latencies, 99), "ttft_p50_s": pct(self.ttfts, 50),
            "ttft_p99_s": pct(self.ttfts, 99), "rss_warm_mb": round(self.rss_warm_mb, 1),
            "rss_end_mb": round(self.rss_end_mb, 1), "error_samples": self.error_samples[:3],
            "p50_s_by_ratio": {str(k): pct(v, 50) for k, v in self.by_ratio.items()},
            "rss_timeline_mb": self.rss_timeline_mb,
        }  # fmt: skip


def _corpus() -> str:
    if WIKITEXT.is_file():
        return WIKITEXT.read_text(encoding="utf-8")[:400_000]
    words = "the river flows past old stone bridges while merchants count silver coins at dawn"
    return " ".join(itertools.islice(itertools.cycle(words.split()), 60_000))


def build_requests(pipe, lengths, ratios, new_tokens, pool: int, compress_from: int) -> list:
    """`pool` distinct requests cycling through lengths x ratios x new_tokens, with references
    (prompts shorter than `compress_from` tokens run uncompressed: too short to merge)."""
    ids = pipe.tokenizer.encode(_corpus()).ids
    combos = [(n, r if n >= compress_from else None, k)
              for n, r, k in itertools.product(lengths, ratios, new_tokens)]  # fmt: skip
    combos = list(dict.fromkeys(combos))
    out = []
    for i in range(pool):
        length, ratio, new = combos[i % len(combos)]
        start = (i * 997) % max(1, len(ids) - length - 1)
        prompt = pipe.tokenizer.decode(ids[start : start + length])
        want = pipe.generate(prompt, max_new_tokens=new, ratio=ratio)
        out.append(Request(prompt, new, ratio, want.prompt_tokens, want.text))
    return out


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


class Server:
    """`semedge serve ...` on a free loopback port, stopped by its pid."""

    def __init__(self, args: list[str], pattern: str, timeout_s: float = 600):
        self.log = Path(tempfile.mkstemp(prefix="semedge-load-", suffix=".log")[1])
        with open(self.log, "wb") as err:
            cmd = [sys.executable, "-m", "semedge", *args, "--port", "0"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-1500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.unlink(missing_ok=True)


def ask_openai(port: int, model: str, req: Request, timeout: float) -> tuple[str, float, int]:
    """(text, ttft_s, completion tokens) of one streamed completion."""
    import openai

    client = _clients.setdefault(
        (threading.get_ident(), port),
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=timeout,
                      max_retries=0),
    )  # fmt: skip
    t0, ttft, text, usage = time.perf_counter(), None, [], 0
    extra = {"ratio": req.ratio} if req.ratio else {}
    stream = client.completions.create(model=model, prompt=req.prompt, max_tokens=req.new_tokens,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body=extra)  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            text.append(chunk.choices[0].text)
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return "".join(text), ttft if ttft is not None else time.perf_counter() - t0, usage


_clients: dict = {}


def ask_triton(port: int, model: str, req: Request, timeout: float) -> tuple[str, float, int]:
    """(text, ttft_s, pieces) of one generate_stream call on the decoupled model."""
    body = {"prompt": req.prompt, "max_new_tokens": req.new_tokens}
    if req.ratio:
        body["ratio"] = req.ratio
    url = f"http://127.0.0.1:{port}/v2/models/semedge_stream/generate_stream"
    t0, ttft, text, pieces = time.perf_counter(), None, [], 0
    r = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(r, timeout=timeout) as resp:
        for line in resp:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if event.get("text"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text.append(event["text"])
                pieces += 1
    return "".join(text), ttft if ttft is not None else time.perf_counter() - t0, pieces


def run_load(ask, port: int, model: str, requests: list[Request], clients: int, per_client: int,
             max_seconds: float, stats: RunStats, pid: int | None = None,
             rss_every_s: float = 60.0) -> None:  # fmt: skip
    """`clients` threads, each sending `per_client` requests in turn until the deadline; with
    `pid`, the server's RSS is sampled every `rss_every_s` into stats.rss_timeline_mb."""
    lock, deadline = threading.Lock(), time.monotonic() + max_seconds
    running = threading.Event()

    def client(c: int) -> None:
        for i in range(per_client):
            if time.monotonic() > deadline:
                return
            # clients start at different requests: the load is mixed at every moment
            req = requests[(c + i) % len(requests)]
            t0 = time.perf_counter()
            try:
                text, ttft, gen = ask(port, model, req, timeout=max_seconds)
            except Exception as err:
                with lock:
                    stats.errors += 1
                    stats.error_samples.append(f"{type(err).__name__}: {err}"[:200])
                continue
            with lock:
                stats.latencies.append(time.perf_counter() - t0)
                stats.by_ratio.setdefault(req.ratio, []).append(time.perf_counter() - t0)
                stats.ttfts.append(ttft)
                stats.generated += gen
                stats.wrong += text != req.want

    def sample_rss() -> None:
        while not running.wait(rss_every_s):
            stats.rss_timeline_mb.append([round(time.perf_counter() - t0), round(_rss_mb(pid), 1)])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    sampler = threading.Thread(target=sample_rss, daemon=True) if pid else None
    if sampler is not None:
        sampler.start()
    for t in threads:
        t.join()
    running.set()
    stats.seconds += time.perf_counter() - t0  # a stats object over several calls: their sum


def _floats(text: str) -> list[float | None]:
    return [
        None if x.strip().lower() in ("none", "1", "1.0") else float(x) for x in text.split(",")
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", required=True, type=Path)
    ap.add_argument("--target", default="semedge", help="semedge,triton")
    ap.add_argument("--clients", default="1,16", help="comma list: one run per value")
    ap.add_argument("--requests", type=int, default=200, help="per client")
    ap.add_argument("--lengths", default="128,512,2048", help="prompt tokens")
    ap.add_argument("--ratios", default="none,2.4")
    ap.add_argument("--new-tokens", default="8,16,32")
    ap.add_argument("--compress-from", type=int, default=256, help="shorter prompts: no ratio")
    ap.add_argument("--pool", type=int, default=12, help="distinct requests (references)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime threads per session (semedge serve --threads; Triton: "
                         "export triton --threads)")  # fmt: skip
    ap.add_argument("--instances", type=int, default=1, help="Triton model instances")
    ap.add_argument("--max-batch-positions", type=int, default=8192)
    ap.add_argument(
        "--provider", default="cpu", help="semedge serve --provider (cpu | openvino ...)"
    )
    ap.add_argument("--max-seconds", type=float, default=600, help="per run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from semedge.runtime import Pipeline

    t0 = time.perf_counter()
    with Pipeline.from_pretrained(args.export, providers=args.provider) as pipe:
        reqs = build_requests(pipe, [int(x) for x in args.lengths.split(",")],
                              _floats(args.ratios), [int(x) for x in args.new_tokens.split(",")],
                              args.pool, args.compress_from)  # fmt: skip
    ref_s = time.perf_counter() - t0  # includes loading the export
    results = [{"target": "in-process Pipeline.generate (references)", "clients": 1,
                "ok": len(reqs), "seconds": round(ref_s, 2),
                "req_per_s": round(len(reqs) / ref_s, 3)}]  # fmt: skip
    for target in args.target.split(","):
        results += _run_target(target, args, reqs)
    server = {"max_batch": args.max_batch, "workers": args.workers, "threads": args.threads,
              "instances": args.instances}  # fmt: skip
    for r in results:
        r["load_avg_1m"] = round(os.getloadavg()[0], 2)
        r["server"] = server
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _run_target(target: str, args, reqs: list[Request]) -> list[dict]:
    scratch = None
    if target == "semedge":
        server = Server(["serve", str(args.export), "--model-name", "load", "--max-batch",
                         str(args.max_batch), "--workers", str(args.workers),
                         "--max-batch-positions", str(args.max_batch_positions),
                         "--provider", args.provider]
                        + (["--threads", str(args.threads)] if args.threads else []),
                        r"on http://127\.0\.0\.1:(\d+)/v1")  # fmt: skip
        ask = ask_openai
    elif target == "triton":
        scratch = Path(tempfile.mkdtemp(prefix="semedge-load-repo-"))
        repo = scratch / "repo"
        from semedge.export.triton_python import PythonRepoConfig, write_python_repo

        repo_cfg = PythonRepoConfig(
            max_batch=args.max_batch, instances=args.instances, threads=args.threads or 0
        )
        write_python_repo(args.export, repo, repo_cfg)
        server = Server(["serve", "--triton", str(repo)], r"ready: HTTP http://127\.0\.0\.1:(\d+)")
        ask = ask_triton
    else:
        raise SystemExit(f"--target {target!r}: choose semedge or triton")
    out = []
    counts = [int(c) for c in args.clients.split(",")]
    try:  # the warm-up is a row too: one client over the mix, then one request per client at
        # the highest concurrency (so the batches the runs need are allocated before "warm" RSS)
        warm = RunStats(f"{target} (warm-up)", 1, rss_warm_mb=_rss_mb(server.proc.pid))
        run_load(ask, server.port, "load", reqs, 1, len(reqs), args.max_seconds, warm)
        if max(counts) > 1:
            run_load(ask, server.port, "load", reqs, max(counts), 1, args.max_seconds, warm)
        time.sleep(REST_S)  # an idle server releases its pool: RSS is read at rest
        warm.rss_end_mb = _rss_mb(server.proc.pid)
        out.append(warm.to_dict())
        for clients in counts:
            stats = RunStats(target, clients, rss_warm_mb=_rss_mb(server.proc.pid))
            run_load(
                ask,
                server.port,
                "load",
                reqs,
                clients,
                args.requests,
                args.max_seconds,
                stats,
                pid=server.proc.pid,
            )
            time.sleep(REST_S)
            stats.rss_end_mb = _rss_mb(server.proc.pid)
            out.append(stats.to_dict())
    finally:
        server.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def _print(results: list[dict]) -> None:
    cols = ["target", "clients", "ok", "errors", "wrong", "req_per_s", "gen_tok_per_s", "p50_s",
            "p90_s", "p99_s", "ttft_p50_s", "ttft_p99_s", "rss_warm_mb", "rss_end_mb"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
        for e in r.get("error_samples", []):
            print(f"  error: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
