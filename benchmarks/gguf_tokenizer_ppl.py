"""WikiText-2 perplexity of an embedded model at a fixed window, BOS first in every window: the
check that a GGUF-converted model got the right tokenizer (Gemma 3 270M: ~23 with semedge's
SentencePiece-exact tokenizer; transformers' own GGUF tokenizer, --transformers-tokenizer, ~134).

    python benchmarks/gguf_tokenizer_ppl.py [--model gemma3-270m] [--window 1024] [--windows 16]
        [--data ../shared/data/wikitext-2/test.txt] [--transformers-tokenizer] [--specials-as-text]

Windows are consecutive and non-overlapping from the file's start; each is BOS + window-1 tokens
and every token after BOS is scored. WikiText writes its unknown words as the text "<unk>", which
the tokenizer reads as Gemma's <unk> control token unless --specials-as-text (then it is "<", "unk",
">", as SentencePiece encodes it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gguf_tokenizer():
    """transformers' tokenizer for the Gemma 3 GGUF (the one the issue found broken)."""
    import tempfile

    import transformers

    from semedge.models.gguf_package import GEMMA3_270M, assemble_chunks, chunks_of

    paths, sha = chunks_of(GEMMA3_270M)
    work = Path(tempfile.mkdtemp())
    gguf = assemble_chunks(paths, sha, work / GEMMA3_270M.file_name)
    return transformers.AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/wikitext-2/test.txt")
    ap.add_argument("--transformers-tokenizer", action="store_true")
    ap.add_argument("--specials-as-text", action="store_true")
    args = ap.parse_args()
    import torch

    from semedge.models import load_model

    model, tok = load_model(args.model)
    if args.transformers_tokenizer:
        tok = _gguf_tokenizer()
    text = args.data.read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False, split_special_tokens=args.specials_as_text)
    ids = ids["input_ids"]
    bos, n = tok.bos_token_id, args.window - 1
    nll, count, t0 = 0.0, 0, time.perf_counter()
    for w in range(min(args.windows, len(ids) // n)):
        x = torch.tensor([[bos, *ids[w * n : (w + 1) * n]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
        nll -= float(logp.gather(1, x[0, 1:, None]).sum())
        count += n
    print(json.dumps({
        "model": args.model, "tokenizer": "transformers-gguf" if args.transformers_tokenizer
        else "semedge", "specials_as_text": args.specials_as_text, "window": args.window, "tokens_scored": count,
        "ppl": round(math.exp(nll / count), 3), "seconds": round(time.perf_counter() - t0, 1),
        "data_tokens": len(ids),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
