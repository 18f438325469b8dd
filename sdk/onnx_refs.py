"""The external-data `location`s of an ONNX model, read from its protobuf without the onnx
package (torch-free, onnx-free: imported by semedge.artifacts for the runtime's verification).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semedge.errors import ArtifactError

__all__ = ["onnx_external_locations"]


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        out |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return out, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited as memoryview."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            val, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            val, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        yield num, wire, val


# ModelProto.graph=7; GraphProto.node=1, initializer=5, sparse_initializer=15;
# NodeProto.attribute=5; AttributeProto.t=5, g=6, tensors=10, graphs=11;
# TensorProto.external_data=13 (StringStringEntryProto key=1, value=2)
def _graph_locations(graph: memoryview, out: set[str]) -> None:
    for num, wire, val in _fields(graph):
        if wire != 2:
            continue
        if num == 5:
            _tensor_locations(val, out)
        elif num == 15:  # SparseTensorProto: values=1, indices=2
            for n2, w2, v2 in _fields(val):
                if w2 == 2 and n2 in (1, 2):
                    _tensor_locations(v2, out)
        elif num == 1:
            for n2, w2, attr in _fields(val):
                if n2 == 5 and w2 == 2:
                    for n3, w3, v3 in _fields(attr):
                        if w3 == 2 and n3 in (5, 10):
                            _tensor_locations(v3, out)
                        elif w3 == 2 and n3 in (6, 11):
                            _graph_locations(v3, out)


def _tensor_locations(tensor: memoryview, out: set[str]) -> None:
    for num, wire, entry in _fields(tensor):
        if num == 13 and wire == 2:
            kv = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(entry) if w == 2}
            if kv.get(1) == "location":
                out.add(kv.get(2, ""))


def onnx_external_locations(path: Path | str) -> set[str]:
    """The external-data `location`s an ONNX model names (read without the onnx package).

    Raises:
        ArtifactError: the file is not a parseable ONNX protobuf.
    """
    out: set[str] = set()
    try:
        data = memoryview(Path(path).read_bytes())
        for num, wire, val in _fields(data):
            if num == 7 and wire == 2:
                _graph_locations(val, out)
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{path} is not a valid ONNX model ({err}); re-export") from err
    return out
