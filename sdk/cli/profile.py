"""`semedge profile`: per-stage latency of an export across context lengths and ratios."""

from __future__ import annotations

import time

import click


def _numbers(value: str, kind: type, flag: str) -> list:
    from semedge.errors import InputError

    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise InputError(
            f"{flag} takes comma-separated numbers, e.g. 512,1024; got {value!r}"
        ) from err


@click.command(name="profile")
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option("--lengths", default="512,1024,2048,4096", show_default=True, help="Context lengths.")
@click.option("--ratios", default="1,2.4", show_default=True, help="Compression ratios (1 = full).")
@click.option(
    "--provider",
    default="cpu",
    show_default=True,
    help="cpu | cuda | tensorrt | openvino | trt-engine",
)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--decode-tokens", type=int, default=16, show_default=True)
@click.option(
    "--json", "json_out", type=click.Path(path_type=str), default=None, help="Write JSON here."
)
@click.option(
    "--plot", type=click.Path(path_type=str), default=None, help="PNG: latency vs context."
)
@click.option("--trace", type=click.Path(path_type=str), default=None, help="Chrome-trace JSON.")
@click.option("--ort-profile", is_flag=True, help="Merge ONNX Runtime's own profile into --trace.")
@click.pass_context
def command(ctx, export_dir, lengths, ratios, provider, warmup, runs, decode_tokens, json_out,
            plot, trace, ort_profile) -> None:  # fmt: skip
    """Profile EXPORT_DIR: tokenize/encode/merge/prefill/decode p50/p90/p99, TTFT, tokens/s."""
    import json
    import tempfile

    from semedge.artifacts import atomic_write_text
    from semedge.cli.common import echo_table, show_progress
    from semedge.deps import require
    from semedge.errors import InputError
    from semedge.runtime import Pipeline
    from semedge.runtime.profiling import check_sweep, plot_profile, profile_export
    from semedge.runtime.trace import StageTimer, chrome_trace, load_ort_profile, write_trace

    lens, rats = _numbers(lengths, int, "--lengths"), _numbers(ratios, float, "--ratios")
    check_sweep(lens, rats, warmup, runs, decode_tokens)
    if ort_profile and not trace:
        raise InputError("--ort-profile merges into the Chrome trace; also pass --trace TRACE.json")
    if plot:
        require("matplotlib")  # fail before the sweep, not after
    prefix = tempfile.mkdtemp(prefix="semedge-ortprof-") + "/ort" if ort_profile else None
    timer = StageTimer()
    loaded_at = time.perf_counter()  # ONNX Runtime's profile clock starts at session creation
    with Pipeline.from_pretrained(export_dir, providers=provider, ort_profile=prefix) as pipe:
        report = profile_export(pipe, lens, rats, warmup, runs, decode_tokens, timer,
                                progress=show_progress(ctx))  # fmt: skip
        ort_events = []
        for b in pipe.backends.values():
            path = b.end_profiling() if hasattr(b, "end_profiling") else None
            if path:
                ort_events += load_ort_profile(path, (loaded_at - timer.origin) * 1e6)
    data = report.to_dict()
    if json_out:
        atomic_write_text(json_out, json.dumps(data, indent=2) + "\n")
    if trace:
        write_trace(trace, chrome_trace(timer, ort_events, device=report.device, provider=provider))
    if plot:
        plot_profile(report, plot)
    st = lambda run, s: run["stages"][s]["p50_ms"]  # noqa: E731
    echo_table(
        ["context", "ratio", "positions", "tokenize", "encode", "merge", "prefill", "ttft_ms",
         "ms/token", "tok/s", "GFLOP/s", "rss_MB", "kv_MB"],
        [[r["context"], r["ratio"], r["compressed_tokens"], st(r, "tokenize"), st(r, "encode"),
          st(r, "merge"), st(r, "prefill"), r["ttft_ms"], st(r, "decode_token"),
          r["decode_tokens_per_s"], r["prefill_gflops"], r["peak_rss_mb"],
          round(r["kv_cache_bytes"] / 2**20, 2)] for r in data["runs"]],
    )  # fmt: skip
    kinds = sorted({r["kv_cache"] for r in data["runs"]})
    click.echo(f"(stage columns: p50 ms; {report.device}, {provider}, matmul peak "
               f"{report.machine['matmul_peak_gflops']} GFLOP/s; KV cache "
               f"{', '.join(kinds) or '-'})")  # fmt: skip
    shares = [r["decode_fp32_fallback_share"] for r in data["runs"]
              if r.get("decode_fp32_fallback_share") is not None]  # fmt: skip
    if shares:
        click.echo(
            f"(decode steps re-run by the fp32 fallback: {min(shares):.1%} .. {max(shares):.1%})"
        )
    if not report.runs:
        raise InputError("no (length, ratio) point fits this export's max_context; lower --lengths")
