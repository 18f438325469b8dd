"""`semedge export check-trt | trt | triton`: click subcommands of the `export` group
(registered in semedge.cli.export).

Light at import (click only): each command imports its library module inside its body.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["check_trt", "trt", "triton"]

_DIR = click.Path(path_type=Path)


@click.command("check-trt")
@click.argument("onnx_dir", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def check_trt(onnx_dir: Path, as_json: bool) -> None:
    """Statically check ONNX_DIR's graphs (or one .onnx file) against TensorRT's limits.

    Exit 1 when an error-level finding exists (TensorRT would not build the graph).
    """
    from semedge.cli.common import echo_json, echo_table
    from semedge.errors import ArtifactError
    from semedge.export.trt_check import check_onnx_dir

    report = check_onnx_dir(onnx_dir)
    if as_json:
        echo_json(report.to_dict())
    elif report.findings:
        rows = [[f.graph, f.severity, f.op, f.node, f.module, f.message] for f in report.findings]
        echo_table(["graph", "severity", "op", "node", "module", "finding"], rows)
    else:
        click.echo(f"{', '.join(report.graphs)}: no TensorRT findings")
    if not report.passed:
        first = report.errors[0]
        raise ArtifactError(
            f"{len(report.errors)} TensorRT error(s) in {onnx_dir}; first: {first.graph} node "
            f"{first.node!r} ({first.op}, module {first.module or '?'}): {first.message}"
        )


@click.command("trt")
@click.argument("onnx_dir", type=_DIR)
@click.argument("out_dir", type=_DIR)
@click.option("--context", default=None, help="Positions MIN:OPT:MAX [1:512:max_context].")
@click.option("--batch", default=None, help="Sequences per call MIN:OPT:MAX [1:1:1].")
@click.option("--workspace", type=int, default=None, help="Workspace MB (clamped to free memory).")
@click.option("--timing-cache", type=_DIR, default=None, help="Timing cache file (read, updated).")
@click.option("--fp16", is_flag=True, help="TensorRT 10: allow fp16 kernels on an fp32 export.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the engine manifest summary as JSON.")
def trt(onnx_dir, out_dir, context, batch, workspace, timing_cache, fp16, overwrite, as_json):
    """Build TensorRT engines (prefill, decode) from a semedge ONNX export into OUT_DIR.

    Without tensorrt, prints the equivalent trtexec command lines on stdout and exits 1.
    """
    from semedge.cli.common import echo_json, echo_table
    from semedge.deps import has_module
    from semedge.errors import BackendUnavailable
    from semedge.export import trt_build

    config = trt_build.EngineBuildConfig(context, batch, workspace, timing_cache, fp16)
    if not has_module("tensorrt"):
        for line in trt_build.plan_trtexec_commands(onnx_dir, out_dir, config):
            click.echo(line)
        raise BackendUnavailable(
            "tensorrt is not importable here (pip install tensorrt on the GPU machine, or run "
            "the trtexec command lines printed on stdout)"
        )
    trt_build.build_engines(onnx_dir, out_dir, config, overwrite=overwrite)
    summary = trt_build.engine_manifest_summary(out_dir)
    if as_json:
        echo_json(summary)
        return
    info = summary["tensorrt"]
    rows = [[g, e["file"], info["precision"], info["version"], info["gpu_name"]]
            for g, e in summary["engines"].items()]  # fmt: skip
    echo_table(["engine", "file", "precision", "tensorrt", "gpu"], rows)


@click.command("triton")
@click.argument("onnx_dir", type=_DIR)
@click.argument("repo_dir", type=_DIR)
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python"]),
              default="onnxruntime",
              help="onnxruntime: one model per graph of an export; tensorrt: of an engine dir; "
                   "python: the whole semedge pipeline (SemToken + generation) in Triton's "
                   "Python backend.")  # fmt: skip
@click.option("--max-batch", type=int, default=None, help="Triton max_batch_size [1; python 8].")
@click.option("--instances", type=int, default=1, help="Model instances per device [1].")
@click.option("--instance-kind", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              help="auto: GPU for tensorrt, CPU for onnxruntime.")  # fmt: skip
@click.option("--threads", type=int, default=None, help="python: ORT threads per session.")
@click.option("--overwrite", is_flag=True, help="Replace an existing REPO_DIR.")
def triton(onnx_dir, repo_dir, backend, max_batch, instances, instance_kind, threads, overwrite):
    """Write a Triton Inference Server model repository for ONNX_DIR."""
    from semedge.config import replace_set

    if backend == "python":
        from semedge.export.triton_python import PythonRepoConfig, write_python_repo

        config = replace_set(PythonRepoConfig(instances=instances), max_batch=max_batch,
                             threads=threads)  # fmt: skip
        models = write_python_repo(onnx_dir, repo_dir, config, overwrite=overwrite)
        max_batch = config.max_batch
    else:
        from semedge.export.triton import TritonConfig, write_triton_repo

        max_batch = 1 if max_batch is None else max_batch
        config = TritonConfig(backend, max_batch, instances, instance_kind)
        models = write_triton_repo(onnx_dir, repo_dir, config, overwrite=overwrite)
    click.echo(f"{repo_dir}: {', '.join(models)} ({backend}, max_batch_size {max_batch})")
