"""Quality evaluation under compression: continuation perplexity and passkey retrieval.

Names load lazily (PEP 562) so `import semedge.eval` stays torch-free until one is used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "METHODS",
    "parse_methods",
    "evaluate_perplexity",
    "PerplexityReport",
    "MethodResult",
    "evaluate_passkey",
    "PasskeyReport",
    "make_passkey_sample",
    "ppl_table",
    "passkey_table",
    "write_ppl_plot",
]

_WHERE = {
    "METHODS": "prompts",
    "parse_methods": "prompts",
    "evaluate_perplexity": "perplexity",
    "PerplexityReport": "perplexity",
    "MethodResult": "perplexity",
    "evaluate_passkey": "passkey",
    "PasskeyReport": "passkey",
    "make_passkey_sample": "passkey",
    "ppl_table": "report",
    "passkey_table": "report",
    "write_ppl_plot": "report",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"semedge.eval.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'semedge.eval' has no attribute {name!r}")
