"""Reading user text files with one-line errors (torch-free: the runtime reads prompts with it)."""

from __future__ import annotations

from pathlib import Path

from semedge.errors import InputError

__all__ = ["read_text_file", "check_text", "parse_names"]


def check_text(text: str, what: str = "text") -> str:
    """Reject empty or whitespace-only text.

    Raises:
        InputError: the text is empty.
    """
    if not text or not text.strip():
        raise InputError(f"{what} is empty; give some text")
    return text


def read_text_file(path: Path | str) -> str:
    """Read a UTF-8 text file.

    Raises:
        InputError: the file is missing, not a file, not UTF-8, or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8"
        ) from err
    return check_text(text, what=str(path))


def parse_names(
    spec: str | list[str] | tuple[str, ...],
    choices: tuple[str, ...],
    what: str,
    allow_all: bool = False,
) -> tuple[str, ...]:
    """'a,b' (or a list) -> ('a', 'b'), each checked against `choices`, duplicates dropped;
    with `allow_all`, 'all' -> every choice.

    Raises:
        InputError: an unknown or missing name (named `what` in the message).
    """
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if allow_all and names == ["all"]:
        return tuple(choices)
    bad = [n for n in names if n not in choices]
    if bad or not names:
        listed = ("all, " if allow_all else "") + ", ".join(choices)
        raise InputError(f"unknown {what}(s) {bad or spec!r}; choose from {listed}")
    return tuple(dict.fromkeys(names))
