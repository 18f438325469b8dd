"""Chat messages -> prompt text with the export's own chat template (torch-free).

The template is the one the export's tokenizer ships (`chat_template.jinja`, or `chat_template`
in `tokenizer_config.json`), rendered in jinja2's sandbox as Hugging Face renders it. An export
without one gets plain ChatML (`CHATML`), the format SmolLM2-Instruct is trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semedge.deps import require
from semedge.errors import ArtifactError, InputError

__all__ = ["ChatTemplate", "CHATML"]

# ChatML as SmolLM2-Instruct's template writes it, without its default system prompt.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _read_listed(directory: Path, name: str, files: dict[str, Any]) -> str | None:
    """A file's text when the manifest lists it (reading stays confined to verified files)."""
    if name not in files or not (directory / name).is_file():
        return None
    try:
        return (directory / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read {directory / name}: {err}; re-export") from err


def _template_source(directory: Path, files: dict[str, Any]) -> tuple[str, str]:
    text = _read_listed(directory, TEMPLATE_FILE, files)
    if text and text.strip():
        return text, TEMPLATE_FILE
    cfg = _read_listed(directory, TOKENIZER_CONFIG, files)
    if cfg:
        try:
            template = json.loads(cfg).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ArtifactError(f"{directory / TOKENIZER_CONFIG} is not JSON: {err}") from err
        if isinstance(template, str) and template.strip():
            return template, TOKENIZER_CONFIG
    return CHATML, "chatml (built in)"


class ChatTemplate:
    """Renders OpenAI-style messages to the prompt the model was trained on.

    Args:
        source: jinja2 template text (Hugging Face chat-template conventions).
        origin: where it came from (shown in logs and /v1/models).
    """

    def __init__(self, source: str = CHATML, origin: str = "chatml (built in)") -> None:
        sandbox = require("jinja2.sandbox", "serve")
        env = sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )  # as transformers renders chat templates
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except Exception as err:  # jinja2.TemplateSyntaxError
            raise ArtifactError(f"the chat template ({origin}) does not parse: {err}") from err
        self.origin = origin

    @classmethod
    def from_export(cls, directory: Path | str, files: dict[str, Any]) -> ChatTemplate:
        """The template of an export directory (its manifest `files`), else ChatML."""
        return cls(*_template_source(Path(directory), files))

    def render(self, messages: Any) -> str:
        """Prompt text for `messages`, ending where the assistant's reply starts.

        Raises:
            InputError: messages is not a non-empty list of {role, content} with known roles.
        """
        clean = check_messages(messages)
        try:
            return self._template.render(messages=clean, add_generation_prompt=True)
        except InputError:
            raise
        except Exception as err:  # a template error on these messages
            raise InputError(f"the chat template cannot render these messages: {err}") from err


def check_messages(messages: Any) -> list[dict[str, str]]:
    """[{role, content}] with string content (a list of text parts is joined)."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {role, content} objects")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise InputError(f"messages[{i}].content parts must all be type 'text'")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string")
        clean.append({"role": m["role"], "content": content})
    return clean


def _raise(message: str) -> None:
    raise InputError(f"the chat template refused the messages: {message}")
