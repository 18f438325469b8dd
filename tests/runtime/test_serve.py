"""`semedge serve` on the tiny export, queried with the official `openai` client.

The server runs as a subprocess on a free loopback port (`--port 0`) and is stopped by its pid.
Greedy outputs must equal `Pipeline.generate`'s for the same requests; bad requests get a 4xx
JSON error and the server stays up.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from semedge.runtime import Pipeline
from tests.conftest import assert_one_line_error
from tests.runtime.server_process import ServerProcess, post_raw

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

MODEL = "tiny"
PROMPTS = ["The quick brown fox jumps over the lazy dog and", "A B C D E F G H " * 6]
LONG = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 30


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["serve", tiny_export, "--port", "0", "--model-name", MODEL, "--max-batch", "4"]
    proc = ServerProcess(args, log, r"on http://127\.0\.0\.1:(\d+)/v1").start()
    yield proc
    assert proc.stop() == 0, proc.log()  # SIGTERM is a clean shutdown


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def pipe(tiny_export):
    with Pipeline.from_pretrained(tiny_export) as p:
        yield p


def test_completions_equal_pipeline_generate(client, pipe):
    for prompt, extra in [(PROMPTS[0], {}), (PROMPTS[1], {}), (LONG, {"ratio": 2.0}),
                          (LONG, {"ratio": 2.0, "query": "kappa"})]:  # fmt: skip
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                        temperature=0, extra_body=extra)  # fmt: skip
        want = pipe.generate(prompt, max_new_tokens=12, **extra)
        assert out.choices[0].text == want.text
        assert out.usage.completion_tokens == len(want.tokens)
        assert out.usage.prompt_tokens == want.prompt_tokens
        assert out.usage.model_extra["semedge"]["compressed_tokens"] == want.compressed_tokens
    assert want.compressed_tokens < want.prompt_tokens  # the ratio reached the model


def test_chat_uses_the_template_and_streams(client, pipe):
    from semedge.runtime.serving.chat import ChatTemplate

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = ChatTemplate.from_export(pipe.path, pipe.manifest.files).render(messages)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")  # ChatML (no template)
    want = pipe.generate(prompt, max_new_tokens=10, stop=["\n\n"])
    out = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, stop=["\n\n"]
    )
    assert out.choices[0].message.content == want.text
    assert out.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                 stop=["\n\n"], stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == len(want.tokens)


def test_completion_stream_joins_to_generate(client, pipe):
    want = pipe.generate(PROMPTS[0], max_new_tokens=16)
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces) == want.text and len(pieces) > 1


def test_concurrent_requests_batch_and_match(client, pipe, server):
    prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS]
    lengths = [4 + (i % 3) * 4 for i in range(len(prompts))]
    ask = lambda pl: client.completions.create(model=MODEL, prompt=pl[0], max_tokens=pl[1])  # noqa: E731
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(ask, zip(prompts, lengths, strict=True)))
    for out, p, n in zip(outs, prompts, lengths, strict=True):
        assert out.choices[0].text == pipe.generate(p, max_new_tokens=n).text
    metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    batches = [ln for ln in metrics.splitlines() if ln.startswith("semedge_batch_size_count")]
    sizes = [ln for ln in metrics.splitlines() if ln.startswith("semedge_batch_size_sum")]
    assert float(sizes[0].split()[-1]) > float(batches[0].split()[-1])  # some batch held > 1


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    assert 'semedge_requests_total{endpoint="completion",status="200"}' in metrics
    assert "semedge_time_to_first_token_seconds_bucket" in metrics


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"prompt": "hi"}, 400, "model is required"),
        ({"model": MODEL}, 400, "prompt is required"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "does not exist"),
        ({"model": MODEL, "prompt": LONG * 20}, 400, "max_context"),
        ({"model": MODEL, "prompt": "hi", "stream": "yes"}, 400, "stream must be"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "ratio": 0.5}, 400, "ratio"),
        ({"model": MODEL, "prompt": "hi", "n": 2}, 400, "n must be 1"),
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt"),
    ],
)
def test_bad_requests_get_4xx(server, body, status, needle):
    code, err = post_raw(f"{server.url}/v1/completions", json.dumps(body).encode())
    assert code == status and needle in err["error"]["message"], err
    assert server.alive()


def test_malformed_bodies_get_4xx_and_server_stays_up(server, client):
    url = f"{server.url}/v1/completions"
    code, err = post_raw(url, f'{{"model": "{MODEL}", "prompt": "x", "temperature": NaN}}'.encode())
    assert code == 400 and "temperature must be a finite number" in err["error"]["message"]
    code, err = post_raw(url, b"{not json")
    assert code == 400 and "not JSON" in err["error"]["message"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:  # 413 at once:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 2097152\r\n\r\n" + b" " * 4096)  # fmt: skip
        assert s.recv(4096).startswith(b"HTTP/1.1 413")  # the server does not read 2 MiB first
    chat = f"{server.url}/v1/chat/completions"
    code, err = post_raw(chat, json.dumps({"model": MODEL, "messages": [{"role": "bot"}]}).encode())
    assert code == 400 and "role" in err["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    assert client.completions.create(model=MODEL, prompt="still up", max_tokens=2).choices


def test_client_leaving_mid_stream_does_not_hurt_the_server(server, client):
    body = json.dumps({"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 400, "stream": True})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
        got, deadline = b"", time.monotonic() + 60
        while b"data:" not in got and time.monotonic() < deadline:
            got += s.recv(4096)
        assert b"data:" in got  # the stream started; now hang up
    out = client.completions.create(model=MODEL, prompt="after", max_tokens=3)
    assert out.choices and server.alive()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the abandoned stream is counted as 499, and ends
        metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
        if 'status="499"' in metrics and "semedge_requests_in_flight 0.0" in metrics:
            break
        time.sleep(0.2)
    assert 'status="499"' in metrics and "semedge_requests_in_flight 0.0" in metrics


def test_serve_cli_errors_are_one_line(cli, tiny_export, tmp_path):
    assert_one_line_error(cli("serve", expect_rc=1))
    assert_one_line_error(cli("serve", tmp_path / "missing", expect_rc=1))
    assert_one_line_error(cli("serve", tiny_export, "--max-batch", "0", expect_rc=1))
    res = cli("serve", tiny_export, "--prefill-chunk", "-1", expect_rc=1)
    assert_one_line_error(res)
    assert "--prefill-chunk must be >= 0" in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        res = cli("serve", tiny_export, "--port", busy.getsockname()[1], expect_rc=1)
    assert_one_line_error(res)
    assert "pick another --port" in res.stderr


def test_serve_refuses_an_adapter_for_another_model(cli, tiny_export):
    res = cli("serve", tiny_export, "--port", "0", "--adapter", "DEFAULT", expect_rc=1)
    assert_one_line_error(res)


SMOLLM2_TEMPLATE = (  # SmolLM2-135M-Instruct's chat_template.jinja, verbatim
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chat_template_renders_like_transformers():
    from semedge.errors import InputError
    from semedge.runtime.serving.chat import ChatTemplate

    t = ChatTemplate(SMOLLM2_TEMPLATE, "test")
    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]
    assert t.render([{"role": "user", "content": parts}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    for bad in ([], [{"role": "user"}], [{"role": "tool", "content": "x"}], "hi"):
        with pytest.raises(InputError):
            t.render(bad)
