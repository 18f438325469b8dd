"""`semedge doctor`: check the installation (packages, providers that really run, GPU, Jetson)."""

from __future__ import annotations

import click


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(as_json: bool) -> None:
    """Show versions, working ONNX Runtime providers, CUDA/cuDNN/TensorRT, GPU and Jetson info."""
    from semedge.cli.common import echo_json, echo_table
    from semedge.runtime.doctor import run_doctor

    rep = run_doctor()
    if as_json:
        echo_json(rep.to_dict())
    else:
        click.echo(f"python {rep.python} on {rep.platform}")
        rows = [[k, v or "-"] for k, v in rep.packages.items()]
        echo_table(["package", "version"], rows)
        click.echo("")
        echo_table(["provider", "works", "detail"],
                   [[k, {True: "yes", False: "NO", None: "?"}[v["ok"]], v["detail"]]
                    for k, v in rep.providers.items()])  # fmt: skip
        click.echo("")
        gpu = rep.gpu
        click.echo(f"GPU: {gpu.get('name') or 'none'}  driver {gpu.get('driver') or '-'}  "
                   f"CUDA {gpu.get('cuda_driver_api') or '-'}  cuDNN {gpu.get('cudnn') or '-'}  "
                   f"TensorRT {gpu.get('tensorrt') or '-'}")  # fmt: skip
        jet = rep.jetson
        click.echo(
            f"Jetson: {jet.get('l4t') + ' JetPack ' + str(jet.get('jetpack')) if jet.get('detected') else 'no'}"
        )
        cpu = rep.cpu
        click.echo(f"CPU matrix features: {', '.join(cpu.get('features') or []) or 'none found'}")
        echo_table(["precision", "runs here", "engine", "provider"],
                   [[k, "yes" if v["ok"] else "no", v["engine"], v["provider"]]
                    for k, v in cpu.get("precisions", {}).items()])  # fmt: skip
        for hint in rep.hints:
            click.echo(f"hint: {hint}")
    if not rep.passed:
        from semedge.errors import BackendUnavailable

        raise BackendUnavailable(
            "onnxruntime's CPU provider does not run; reinstall onnxruntime (pip install onnxruntime)"
        )
