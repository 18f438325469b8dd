"""Graph clean-up after tracing: declared I/O types and shapes, external data.

What measurement showed matters on CPU (docs/export.md): fused GroupQueryAttention (chosen at trace
time, semedge.export.attention) and logits for the last position only; ORT's own level-ALL graph
optimizer then fuses the norms and GELU when the session loads. This module stamps the declared
I/O types and symbolic shapes on the graph and writes it, with external data past 2 GB.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from semedge.deps import require
from semedge.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

    from semedge.export.graphs import GraphSpec

log = logging.getLogger(__name__)

__all__ = ["EXTERNAL_DATA_BYTES", "stamp_io", "save_graph"]

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave headroom


def stamp_io(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """Set every graph input/output to the spec's dtype and symbolic shape, in the spec's order.

    Raises:
        ArtifactError: the traced graph's I/O names differ from the spec (an exporter bug).
    """
    onnx = require("onnx")
    graph = model.graph
    for have, want in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
        names = [v.name for v in have]
        if names != [t.name for t in want]:
            raise ArtifactError(f"{spec.file}: traced I/O {names} != expected {list(want)}")
        typed = [onnx.helper.make_tensor_value_info(t.name, t.onnx_dtype, t.shape) for t in want]
        del have[:]
        have.extend(typed)
    return model


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` to `path`; weights go to `<file>.data` beside it past ~1.8 GB."""
    onnx = require("onnx")
    big = model.ByteSize() > EXTERNAL_DATA_BYTES
    try:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot write {path}: {err}") from err
    log.debug("wrote %s (%s)", path.name, "external data" if big else "inline weights")
