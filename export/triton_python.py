"""A Triton repository whose Python-backend models run semedge's torch-free runtime.

Two models share one copy of the export (`semedge/1/export/`, hard links where possible):

    REPO/semedge/config.pbtxt          one response per request; dynamic batching
    REPO/semedge/1/model.py            -> semedge.runtime.serving.triton_model.TritonModel
    REPO/semedge/1/export/...          the export directory (manifest, graphs, tokenizer)
    REPO/semedge_stream/config.pbtxt   decoupled: text pieces as they are generated
    REPO/semedge_stream/1/model.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from semedge.artifacts import load_manifest, staged_dir, verify_manifest
from semedge.constants import FORMAT_CALIBRATED, FORMAT_EXPORT, MANIFEST
from semedge.errors import InputError

__all__ = ["PythonRepoConfig", "write_python_repo", "python_model_config"]

MODEL = "semedge"
STREAM_MODEL = "semedge_stream"

# model.py: Triton runs the stub's own interpreter; `semedge serve --triton` passes the site
# directories of the Python semedge is installed in (SEMEDGE_SITE_DIRS) so it imports here.
MODEL_PY = '''"""Triton Python-backend model written by `semedge export triton --backend python`."""

import os
import site
import sys

# the stub runs an isolated interpreter (PYTHONPATH is ignored): add the launcher's site dirs
# (their .pth files too), ahead of the interpreter's own, in the order given
_before = list(sys.path)
for _d in os.environ.get("SEMEDGE_SITE_DIRS", "").split(os.pathsep):
    if _d:
        site.addsitedir(_d)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

from semedge.runtime.serving.triton_model import TritonModel  # noqa: E402


class TritonPythonModel(TritonModel):
    pass
'''


@dataclass(frozen=True)
class PythonRepoConfig:
    """Python-backend repository options.

    Args:
        max_batch: Triton max_batch_size: requests the dynamic batcher hands over at once.
        instances: model instances (each loads the export and runs batches on its own).
        queue_delay_us: how long the dynamic batcher waits to fill a batch.
        threads: ONNX Runtime intra-op threads per session (0: ORT's default).
    """

    max_batch: int = 8
    instances: int = 1
    queue_delay_us: int = 10_000
    threads: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise InputError(f"--max-batch must be >= 1 for --backend python, got {self.max_batch}")
        if self.instances < 1:
            raise InputError(f"--instances must be >= 1, got {self.instances}")
        if self.queue_delay_us < 0 or self.threads < 0:
            raise InputError("queue delay and threads must be >= 0")


def _tensor(name: str, dtype: str, dims: list[int], optional: bool | None) -> str:
    opt = "\n    optional: true" if optional else ""
    dims_text = ", ".join(map(str, dims))
    return f"  {{\n    name: {json.dumps(name)}\n    data_type: {dtype}\n    dims: [ {dims_text} ]{opt}\n  }}"


def python_model_config(name: str, config: PythonRepoConfig, decoupled: bool,
                        export_dir: str) -> str:  # fmt: skip
    """config.pbtxt text of one Python-backend model (Triton ModelConfig, protobuf text)."""
    from semedge.runtime.serving.triton_model import INPUTS, OUTPUTS

    inputs = ",\n".join(_tensor(n, t, d, o) for n, (t, d, o) in INPUTS.items())
    outputs = ",\n".join(_tensor(n, t, d, None) for n, (t, d) in OUTPUTS.items())
    params = {"export_dir": export_dir, "threads": str(config.threads)}
    param_text = "\n".join(
        f"parameters: {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}"
        for k, v in params.items()
    )
    return "\n".join([
        f"name: {json.dumps(name)}",
        'backend: "python"',
        f"max_batch_size: {config.max_batch}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
        f"instance_group [\n  {{\n    count: {config.instances}\n    kind: KIND_CPU\n  }}\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.queue_delay_us}\n}}",
        f"model_transaction_policy {{\n  decoupled: {'true' if decoupled else 'false'}\n}}",
        param_text,
    ]) + "\n"  # fmt: skip


def write_python_repo(src_dir: Path | str, repo_dir: Path | str,
                      config: PythonRepoConfig | None = None, overwrite: bool = False) -> list[str]:  # fmt: skip
    """Write a Python-backend Triton repository serving the export `src_dir`.

    Args:
        src_dir: a `semedge export onnx` or `semedge calibrate` directory.
        repo_dir: the repository to create (atomically).
        config: batch size, instances, batching delay, threads.
        overwrite: replace an existing `repo_dir`.

    Returns:
        The model names written.

    Raises:
        ArtifactError: not an export, a tampered file, an unwritable `repo_dir`.
    """
    from semedge.export.triton import _link_or_copy

    src_dir, repo_dir = Path(src_dir), Path(repo_dir)
    config = config or PythonRepoConfig()
    manifest = load_manifest(src_dir, expect_format=(FORMAT_EXPORT, FORMAT_CALIBRATED))
    verify_manifest(src_dir, manifest)  # a tampered graph must not reach the server
    with staged_dir(repo_dir, overwrite=overwrite) as tmp:
        export = tmp / MODEL / "1" / "export"
        for rel in [*manifest.files, MANIFEST]:
            _link_or_copy(src_dir / rel, export / rel)
        for name, decoupled, where in ((MODEL, False, "1/export"),
                                       (STREAM_MODEL, True, f"../{MODEL}/1/export")):  # fmt: skip
            (tmp / name / "1").mkdir(parents=True, exist_ok=True)
            (tmp / name / "1" / "model.py").write_text(MODEL_PY)
            text = python_model_config(name, config, decoupled, where)
            (tmp / name / "config.pbtxt").write_text(text)
    return [MODEL, STREAM_MODEL]
