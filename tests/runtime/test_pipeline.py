"""Pipeline and Generator on the toy export: cache consistency, streaming, batching, threads."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from semedge.errors import ArtifactError, BackendUnavailable, InputError
from semedge.runtime import GenerationConfig, Pipeline
from tests.conftest import run_python
from tests.runtime.toy_export import sample_text

ROOT = Path(__file__).resolve().parents[2]
TEXT = sample_text()


@pytest.fixture(scope="module")
def pipe(toy_export):
    with Pipeline.from_pretrained(toy_export, providers=["cpu"]) as p:
        yield p


def _prefill_logits(pipe, ids):
    feeds = {
        "inputs_embeds": pipe.embed(ids)[None],
        "position_ids": np.arange(len(ids), dtype=np.int64)[None],
        "attention_mask": np.ones((1, len(ids)), np.int64),
    }
    return pipe.prefill.run(feeds)["logits"][0, -1]


def test_cache_decode_equals_full_prefill(pipe):
    """prefill(T) + decode steps through the ping-pong cache == prefill(T + k) from scratch."""
    gen = pipe.generator(TEXT[:300], GenerationConfig(max_new_tokens=5))
    ids = list(gen.prompts[0].ids)
    for _ in range(4):
        tok = int(gen.generate_next_token()[0])
        ids.append(tok)
        gen._decode(np.array([tok]))  # feed it now to read the next logits
        gen._pending = None
        np.testing.assert_allclose(
            gen._logits[0], _prefill_logits(pipe, np.array(ids)), rtol=1e-4, atol=1e-4
        )


def test_stream_equals_generate(pipe):
    for ratio in (None, 2.4):
        full = pipe.generate(TEXT[:400], max_new_tokens=12, ratio=ratio)
        assert "".join(pipe.stream(TEXT[:400], max_new_tokens=12, ratio=ratio)) == full.text
        assert len(full.tokens) == 12


def test_compression_reduces_positions(pipe):
    res = pipe.generate(TEXT[:600], max_new_tokens=2, ratio=2.4)
    assert res.token_reduction == pytest.approx(2.4, rel=0.05)
    assert res.spans[0, 0] == 0 and res.spans[-1, 1] == res.prompt_tokens


def test_batch_equals_single(pipe):
    prompts = [TEXT[:200], TEXT[500:900], TEXT[1000:1100]]
    batch = pipe.generate(prompts, max_new_tokens=8)
    single = [pipe.generate(p, max_new_tokens=8) for p in prompts]
    assert [r.tokens for r in batch] == [r.tokens for r in single]


def test_threads_share_one_pipeline(pipe):
    prompts = [TEXT[i * 97 : i * 97 + 300] for i in range(4)]
    want = [pipe.generate(p, max_new_tokens=6, ratio=2.0).tokens for p in prompts]

    def work(i):
        return i % 4, pipe.generate(prompts[i % 4], max_new_tokens=6, ratio=2.0).tokens

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(work, range(48)))
    assert all(tokens == want[k] for k, tokens in got)


def test_sampling_is_seeded(pipe):
    a = pipe.generate(TEXT[:300], max_new_tokens=10, temperature=1.0, seed=3)
    b = pipe.generate(TEXT[:300], max_new_tokens=10, temperature=1.0, seed=3)
    greedy = pipe.generate(TEXT[:300], max_new_tokens=10)
    top1 = pipe.generate(TEXT[:300], max_new_tokens=10, temperature=1.0, top_k=1, seed=5)
    assert a.tokens == b.tokens
    assert top1.tokens == greedy.tokens


def test_stop_string_cuts_text(pipe):
    full = pipe.generate(TEXT[:300], max_new_tokens=12)
    stop = full.text[3:5]
    res = pipe.generate(TEXT[:300], max_new_tokens=12, stop=stop)
    assert res.finish_reason == "stop" and stop not in res.text
    assert full.text.startswith(res.text)


def test_prompt_over_max_context_names_the_fix(pipe):
    fix = r"supports 512 \(max_context\); re-export with --max-context 2048 or pass --ratio \d"
    with pytest.raises(InputError, match=fix):
        pipe.generate(TEXT[:2000], max_new_tokens=4)
    assert pipe.generate(TEXT[:2000], max_new_tokens=4, ratio=4.0).compressed_tokens <= 508
    with pytest.raises(
        InputError, match="positions end at 2048.*pass --ratio .*--max-context 4096"
    ):
        pipe.generate(TEXT[:4000], max_new_tokens=4)
    # compressed, a prompt past the export's positions fits with compacted positions
    res = pipe.generate(TEXT[:4000], max_new_tokens=4, ratio=8.0)
    assert res.prompt_tokens > 2048 and res.compressed_tokens <= 508


def test_tampered_export_is_refused(toy_export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(toy_export, bad)
    data = bytearray((bad / "decode.onnx").read_bytes())
    data[-5] ^= 0xFF
    (bad / "decode.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decode.onnx.*SHA-256"):
        Pipeline.from_pretrained(bad)


def test_missing_dir_and_bad_providers(toy_export, tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        Pipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(InputError, match="unknown provider 'npu'"):
        Pipeline.from_pretrained(toy_export, providers="npu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="cuda"):
            Pipeline.from_pretrained(toy_export, providers=["cuda"])


def test_generation_with_torch_blocked(toy_export):
    probe = (
        "from semedge.runtime import Pipeline\n"
        f"p = Pipeline.from_pretrained({str(toy_export)!r})\n"
        f"r = p.generate({TEXT[:400]!r}, max_new_tokens=4, ratio=2.0)\n"
        "assert len(r.tokens) == 4 and r.compressed_tokens < r.prompt_tokens\n"
        "print('ok', sorted(m for m in sys.modules if m.startswith(('torch', 'semedge.export'))))"
    )
    proc = run_python(probe, block=("torch", "transformers"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok ['torch']", proc.stdout


def test_generate_takes_a_config_and_keyword_overrides(pipe):
    cfg = GenerationConfig(max_new_tokens=6, ratio=2.0)
    by_config = pipe.generate(TEXT[:400], cfg)
    by_keywords = pipe.generate(TEXT[:400], max_new_tokens=6, ratio=2.0)
    assert by_config.tokens == by_keywords.tokens and by_config.compressed_tokens < 400
    assert pipe.generate(TEXT[:400], cfg, max_new_tokens=3).tokens == by_config.tokens[:3]
    assert "".join(pipe.stream(TEXT[:400], cfg)) == by_config.text
    with pytest.raises(TypeError):
        pipe.generate(TEXT[:400], max_new_token=3)  # a typo is not silently ignored


def test_teacher_forced_score_equals_generation_logits(pipe):
    """Generator.score feeds given tokens through the same cache: row j predicts targets[j]."""
    gen = pipe.generator(TEXT[:300], GenerationConfig(max_new_tokens=4))
    tokens = [int(gen.generate_next_token()[0]) for _ in range(4)]
    scorer = pipe.generator(TEXT[:300], GenerationConfig(max_new_tokens=4))
    logits = scorer.score(np.array([tokens]))
    assert logits.shape[:2] == (1, 4)
    assert logits[0].argmax(-1).tolist() == tokens  # greedy: each row's argmax is the next token
    assert scorer.is_done()


def test_api_misuse_is_a_usage_error_not_bad_input(pipe, toy_export):
    from semedge.errors import SemedgeError, UsageError
    from semedge.runtime.backends.ort import OrtBackend

    assert not issubclass(UsageError, SemedgeError)  # the CLI reports it as a bug (exit 3)
    gen = pipe.generator(TEXT[:300], GenerationConfig(max_new_tokens=1))
    with pytest.raises(UsageError, match="one per request"):
        gen.append_prompts(gen.prompts)
    gen.generate_next_token()
    with pytest.raises(UsageError, match="done"):
        gen.generate_next_token()
    with pytest.raises(UsageError, match="load()"):
        OrtBackend(toy_export / "prefill.onnx").run({})


def test_every_backend_implements_the_protocol(pipe, tmp_path):
    from semedge.runtime.backends.base import Backend
    from semedge.runtime.backends.trt import TrtBackend

    assert pipe.backends and all(isinstance(b, Backend) for b in pipe.backends.values())
    assert isinstance(TrtBackend(tmp_path / "x.plan"), Backend)
    assert not isinstance(object(), Backend)
