"""File and tensor names shared by export, calibration and runtime (torch-free).

One place for every name an artifact carries, so writer and reader cannot drift apart.
ONNX tensor names follow Optimum / onnxruntime-genai.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1

# manifest "format" values
FORMAT_EXPORT = "semedge-export"
FORMAT_ENGINE = "semedge-engine"
FORMAT_CALIBRATED = "semedge-calibrated"

# graphs in an export directory
EMBED_ONNX = "embed.onnx"  # input_ids -> inputs_embeds (token embedding table lookup)
ENCODER_ONNX = "encoder.onnx"  # input_ids, attention_mask -> encoder_hidden (SemToken encoder)
PREFILL_ONNX = "prefill.onnx"  # inputs_embeds, position_ids, attention_mask -> logits, presents
DECODE_ONNX = "decode.onnx"  # input_ids, position_ids, attention_mask, past -> logits, presents
# the fp32 decode graph beside a quantized one: re-runs the steps whose next token is a near tie
# (config["decode_fallback"]["margin"]; runtime.generator)
DECODE_EXACT_ONNX = "decode_exact.onnx"

TOKENIZER_JSON = "tokenizer.json"
SEMEDGE_CONFIG = "semedge_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"

# tensor names
INPUT_IDS = "input_ids"
INPUTS_EMBEDS = "inputs_embeds"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
ENCODER_HIDDEN = "encoder_hidden"
KEEP_FROM = (
    "keep_from"  # encoder.onnx: (1,) first row whose state is returned (the rest are context)
)
LOGITS = "logits"
PAST_KEY = "past_key_values.{i}.key"
PAST_VALUE = "past_key_values.{i}.value"
PRESENT_KEY = "present.{i}.key"
PRESENT_VALUE = "present.{i}.value"

DEFAULT_MODEL = "smollm2"

FP16_MAX = 65504.0  # fp16's largest finite value
