"""TensorRT optimisation profiles and trtexec command lines from an export manifest (pure python).

Prefill takes T new tokens (T in the context range); decode takes one token over a KV cache of
P past positions (P in the context range, minus the new one). Shapes print the trtexec way:
`inputs_embeds:1x512x576`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semedge.constants import (
    ATTENTION_MASK,
    DECODE_ONNX,
    INPUT_IDS,
    INPUTS_EMBEDS,
    POSITION_IDS,
    PREFILL_ONNX,
)
from semedge.errors import ArtifactError, InputError
from semedge.runtime.kv_cache import kv_layer, local_kv

__all__ = [
    "DimRange",
    "Shapes",
    "parse_range",
    "graph_inputs",
    "prefill_profile",
    "decode_profile",
    "engine_profiles",
    "shape_string",
    "trtexec_command",
]

ENGINE_GRAPHS = {"prefill": PREFILL_ONNX, "decode": DECODE_ONNX}
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max)
DEFAULT_OPT_CONTEXT = 512


@dataclass(frozen=True)
class DimRange:
    """An inclusive min:opt:max range of one dimension (trtexec's min/opt/max shapes)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.opt <= self.max:
            raise InputError(
                f"range {self.min}:{self.opt}:{self.max} must satisfy 0 < MIN <= OPT <= MAX"
            )

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_range(text: str, what: str) -> DimRange:
    """Parse "MIN:OPT:MAX" (or a single "N" for N:N:N).

    Raises:
        InputError: not three positive integers in order.
    """
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(f"--{what} {text!r} is not MIN:OPT:MAX (e.g. 1:512:2048)")
    try:
        return DimRange(*values)
    except InputError as err:
        raise InputError(f"--{what} {text}: {err}") from None


def graph_inputs(manifest: dict[str, Any], graph: str) -> dict[str, dict[str, Any]]:
    """The `inputs` of `graph` ("prefill", "decode", ...) from a manifest dict.

    Accepts graph keys with or without the ".onnx" suffix.

    Raises:
        ArtifactError: the manifest does not describe the graph.
    """
    graphs = manifest.get("graphs") or {}
    entry = graphs.get(graph) or graphs.get(f"{graph}.onnx")
    if not entry or not entry.get("inputs"):
        raise ArtifactError(
            f"manifest has no inputs for graph {graph!r}; re-export with `semedge export onnx`"
        )
    return entry["inputs"]


def _resolve(name: str, shape: list[Any], roles: tuple[int, ...]) -> tuple[int, ...]:
    """Fill the symbolic dims of `shape` with `roles` (position-wise); keep the static ones."""
    if len(shape) != len(roles):
        raise ArtifactError(
            f"input {name!r} has rank {len(shape)} in the manifest, expected {len(roles)}; "
            "re-export with this semedge version"
        )
    return tuple(
        int(d) if isinstance(d, int) and d > 0 else r for d, r in zip(shape, roles, strict=True)
    )


def _profile(inputs: dict[str, dict[str, Any]], roles) -> dict[str, Shapes]:
    out: dict[str, Shapes] = {}
    for name, spec in inputs.items():
        shape = list(spec.get("shape", []))
        out[name] = tuple(_resolve(name, shape, roles(name, i)) for i in range(3))  # type: ignore[assignment]
    return out


def prefill_profile(
    manifest: dict[str, Any], context: DimRange, batch: DimRange
) -> dict[str, Shapes]:
    """Min/opt/max shapes of every prefill input: T new tokens, T in `context`.

    Raises:
        ArtifactError: the manifest lacks the prefill graph or its config.
    """
    inputs = graph_inputs(manifest, "prefill")
    hidden = int(manifest.get("config", {}).get("hidden_size") or 0)
    b, t = (batch.min, batch.opt, batch.max), (context.min, context.opt, context.max)

    def roles(name: str, i: int) -> tuple[int, ...]:
        if name == INPUTS_EMBEDS:  # (B, T, D)
            return (b[i], t[i], hidden)
        return (b[i], t[i])  # position_ids, attention_mask: (B, T)

    return _profile(inputs, roles)


def decode_profile(
    manifest: dict[str, Any], context: DimRange, batch: DimRange
) -> dict[str, Shapes]:
    """Min/opt/max shapes of every decode input: 1 new token over P past positions.

    P runs over `context` less the new token: P in [context.min, context.max - 1].

    Raises:
        ArtifactError: the manifest lacks the decode graph or its config.
    """
    inputs = graph_inputs(manifest, "decode")
    cfg = manifest.get("config", {})
    n_kv, head_dim = int(cfg.get("num_kv_heads") or 0), int(cfg.get("head_dim") or 0)
    p_max = max(context.max - 1, 1)
    p_min = min(context.min, p_max)
    p = (p_min, min(max(context.opt, p_min), p_max), p_max)
    b = (batch.min, batch.opt, batch.max)
    local_layers, slots = local_kv(cfg)

    def roles(name: str, i: int) -> tuple[int, ...]:
        if name in (INPUT_IDS, POSITION_IDS):  # (B, 1)
            return (b[i], 1)
        if name == ATTENTION_MASK:  # (B, P + 1): past and the new token
            return (b[i], p[i] + 1)
        if kv_layer(name) in local_layers:  # a sliding-window layer's last slots
            return (b[i], n_kv, min(p[i], slots), head_dim)
        return (b[i], n_kv, p[i], head_dim)  # past_key_values.{i}.key|value: (B, n_kv, P, hd)

    return _profile(inputs, roles)


def engine_profiles(
    manifest: dict[str, Any], context: DimRange | None = None, batch: DimRange | None = None
) -> dict[str, dict[str, Shapes]]:
    """Profiles of the prefill and decode engines from an export manifest.

    Args:
        manifest: the export's manifest as a dict (`Manifest.to_dict()` or the JSON).
        context: positions per sequence; default 1:min(512, max_context):max_context.
        batch: sequences per call; default 1:1:1.

    Returns:
        {"prefill": {input: (min, opt, max)}, "decode": {...}}.

    Raises:
        InputError: the context range exceeds the export's max_context.
        ArtifactError: the manifest lacks graphs or config.
    """
    max_context = int(manifest.get("config", {}).get("max_context") or 0)
    if max_context < 2:
        raise ArtifactError("manifest config has no max_context; re-export with this semedge")
    context = context or DimRange(1, min(DEFAULT_OPT_CONTEXT, max_context), max_context)
    batch = batch or DimRange(1, 1, 1)
    if context.max > max_context:
        raise InputError(
            f"--context max {context.max} exceeds the export's max_context {max_context}; "
            f"pass --context {context.min}:{min(context.opt, max_context)}:{max_context} or "
            f"re-export with --max-context {context.max}"
        )
    if context.max < 2:
        raise InputError("--context max must be >= 2 (a prompt token and a generated one)")
    return {
        "prefill": prefill_profile(manifest, context, batch),
        "decode": decode_profile(manifest, context, batch),
    }


def shape_string(name: str, shape: tuple[int, ...]) -> str:
    """trtexec's spelling of one input shape: `inputs_embeds:1x1x576`."""
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def trtexec_command(
    onnx_path: Path | str,
    engine_path: Path | str,
    profile: dict[str, Shapes],
    workspace_mb: int | None = None,
    timing_cache: Path | str | None = None,
    fp16: bool = False,
    strongly_typed: bool = False,
) -> str:
    """The trtexec command line that builds the same engine as `semedge export trt`.

    Args:
        onnx_path: the ONNX graph.
        engine_path: where trtexec saves the plan.
        profile: {input: (min, opt, max)} from `engine_profiles`.
        workspace_mb: workspace memory-pool limit.
        timing_cache: a timing-cache file read and updated by the build.
        fp16: TensorRT 10 weak typing with fp16 kernels (`--fp16`; gone in TensorRT 11).
        strongly_typed: precision from the ONNX (`--stronglyTyped`; the default in TensorRT 11).

    Returns:
        One shell-quoted command line.
    """
    shapes = {
        flag: ",".join(shape_string(name, s[k]) for name, s in profile.items())
        for k, flag in enumerate(("minShapes", "optShapes", "maxShapes"))
    }
    args = ["trtexec", f"--onnx={onnx_path}"]
    args += [f"--{flag}={value}" for flag, value in shapes.items()]
    args.append(f"--saveEngine={engine_path}")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if workspace_mb:
        args.append(f"--memPoolSize=workspace:{workspace_mb}M")
    if fp16:
        args.append("--fp16")
    elif strongly_typed:
        args.append("--stronglyTyped")
    return shlex.join(args)
