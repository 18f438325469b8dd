"""semedge.runtime: torch-free inference on an export (numpy, onnxruntime, tokenizers).

Never imports torch: `import semedge.runtime` works on an edge box with only the runtime installed.
Public names load lazily (PEP 562) so the import itself is cheap.

    from semedge.runtime import Pipeline
    pipe = Pipeline.from_pretrained("exports/smollm2", providers=["cpu"])
    print(pipe.generate(text, max_new_tokens=64, ratio=2.4).text)
"""

from __future__ import annotations

from semedge._lazy import lazy_exports

_LAZY = {
    "Pipeline": "semedge.runtime.pipeline",
    "Generator": "semedge.runtime.generator",
    "GenerationConfig": "semedge.runtime.sampling",
    "GenerationResult": "semedge.runtime.generator",
    "profile_export": "semedge.runtime.profiling",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
