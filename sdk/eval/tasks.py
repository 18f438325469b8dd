"""RULER-style long-context tasks generated offline from any UTF-8 filler text.

Torch-free. Each task builds a prompt of about `context` tokens (for a given tokenizer): an
instruction, a haystack of real filler sentences with the task's needles at seeded,
depth-stratified places, and a question ending in an answer prefix. Scoring is RULER's: the
case-insensitive share of the reference strings found in the answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from semedge.errors import InputError
from semedge.textio import parse_names

__all__ = [
    "TASKS",
    "TaskSample",
    "FillerText",
    "make_sample",
    "parse_tasks",
    "score_answer",
]

# Two-word keys (adjective-noun) that no ordinary filler contains as such: the needle's key.
_ADJECTIVES = (
    "amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly",
    "keen", "lucky", "mellow", "nimble", "odd", "pale", "quiet", "rapid", "silent", "tidy",
    "upbeat", "vivid", "wary", "young", "zesty", "bold", "crisp", "damp", "fierce", "grumpy",
)  # fmt: skip
_NOUNS = (
    "anchor", "badger", "candle", "dolphin", "ember", "falcon", "garden", "harbor", "igloo",
    "jacket", "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quartz", "raven",
    "saddle", "tulip", "umbrella", "violin", "walrus", "yacht", "zipper", "basket", "cactus",
    "donkey", "engine", "fossil",
)  # fmt: skip
_WORD_VALUES = (
    "apricot", "blizzard", "cobalt", "dynamo", "emerald", "fjord", "glacier", "hazelnut",
    "indigo", "jasmine", "kiwi", "lagoon", "mango", "nectar", "obsidian", "papaya", "quinoa",
    "saffron", "tangerine", "velvet", "walnut", "yogurt", "zeppelin", "marble", "copper",
)  # fmt: skip
_VAR_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class TaskSample:
    """One generated prompt. `needles` are [start, end) character spans of `prompt` that hold
    what the answer needs (empty for tasks whose answer is spread over the whole context)."""

    task: str
    prompt: str
    question: str  # the question part (also the query for query-aware methods)
    answers: tuple[str, ...]
    needles: tuple[tuple[int, int], ...]
    depth: float  # where the (first) needle lies in the haystack, 0 (start) .. 1 (end)
    max_new_tokens: int


def score_answer(answer: str, references: tuple[str, ...] | list[str]) -> float:
    """RULER's string_match_all: the share of references found in `answer`, case-insensitive."""
    if not references:
        raise InputError("a task sample needs at least one reference answer")
    low = answer.lower()
    return float(np.mean([r.lower() in low for r in references]))


class FillerText:
    """Real filler cut into sentences, with each sentence's token count for one tokenizer.

    Args:
        text: any UTF-8 prose (the shipped WikiText-2 excerpt by default).
        count_tokens: `list[str] -> list[int]`, tokens per string (no special tokens).

    Raises:
        InputError: the text has fewer than 8 sentences.
    """

    def __init__(self, text: str, count_tokens: Callable[[list[str]], list[int]]) -> None:
        lines = [ln.strip() for ln in text.splitlines()]
        body = " ".join(ln for ln in lines if ln and not ln.startswith("="))  # skip headings
        parts = re.split(r"(?<=[.!?])\s+", body)
        self.sentences = [p.strip() for p in parts if len(p.strip()) > 1]
        if len(self.sentences) < 8:
            raise InputError(
                f"the filler has {len(self.sentences)} sentences; give --data a longer UTF-8 text"
            )
        self.tokens = np.asarray(count_tokens([" " + s for s in self.sentences]), np.int64)
        self.total = int(self.tokens.sum())

    def take(self, n_tokens: int, rng: np.random.Generator) -> list[str]:
        """Consecutive sentences (from a seeded start) totalling at most `n_tokens` tokens.

        Raises:
            InputError: the filler holds fewer than `n_tokens` tokens.
        """
        if n_tokens > self.total:
            raise InputError(
                f"the filler has {self.total} tokens but this prompt needs {n_tokens}; "
                "pass a longer --data file or a smaller --context"
            )
        n = len(self.sentences)
        order = np.roll(np.arange(n), -int(rng.integers(0, n)))
        out, used = [], 0
        for i in order:
            if used + self.tokens[i] > n_tokens:
                break
            out.append(self.sentences[i])
            used += int(self.tokens[i])
        return out


def _key(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        k = f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]}-{_NOUNS[rng.integers(len(_NOUNS))]}"
        if k not in taken:
            taken.add(k)
            return k


def _number(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 10_000_000)))


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


@dataclass(frozen=True)
class _Spec:
    """What a task puts in the haystack and asks."""

    instruction: str
    needles: list[str]  # sentences to hide (first one at the sample's depth)
    question: str
    answers: tuple[str, ...]
    max_new_tokens: int
    spread: bool = True  # the other needles go at random depths


def _niah(kind: str) -> Callable[[np.random.Generator], _Spec]:
    what = {"number": "number", "word": "word", "uuid": "UUID"}[kind]
    value_of = {"number": _number, "uuid": _uuid}.get(
        kind, lambda r: _WORD_VALUES[r.integers(len(_WORD_VALUES))]
    )

    def spec(rng: np.random.Generator) -> _Spec:
        key, value = _key(rng, set()), value_of(rng)
        return _Spec(
            f"A special magic {what} is hidden within the following text. Make sure to memorize "
            f"it. I will quiz you about the {what} afterwards.\n\n",
            [f"One of the special magic {what}s for {key} is: {value}."],
            f"What is the special magic {what} for {key} mentioned in the provided text? "
            f"Answer: The special magic {what} for {key} mentioned in the provided text is",
            (value,),
            48 if kind == "uuid" else 12,  # a UUID is 36 characters: up to ~38 tokens
        )

    return spec


def _keyed_numbers(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], list[str]]:
    """n distinct keys, a number for each, and the needle sentences that hold them."""
    taken: set[str] = set()
    keys = [_key(rng, taken) for _ in range(n)]
    values = [_number(rng) for _ in keys]
    needles = [
        f"One of the special magic numbers for {k} is: {v}."
        for k, v in zip(keys, values, strict=False)
    ]
    return keys, values, needles


def _multikey(rng: np.random.Generator) -> _Spec:
    keys, values, needles = _keyed_numbers(rng, 4)
    return _Spec(
        "Some special magic numbers are hidden within the following text. Make sure to memorize "
        "them. I will quiz you about the numbers afterwards.\n\n",
        needles,
        f"What is the special magic number for {keys[0]} mentioned in the provided text? "
        f"Answer: The special magic number for {keys[0]} mentioned in the provided text is",
        (values[0],),
        12,
    )


def _multivalue(rng: np.random.Generator) -> _Spec:
    key = _key(rng, set())
    values = [_number(rng) for _ in range(4)]
    return _Spec(
        "Some special magic numbers are hidden within the following text. Make sure to memorize "
        "them. I will quiz you about the numbers afterwards.\n\n",
        [f"One of the special magic numbers for {key} is: {v}." for v in values],
        f"What are all the special magic numbers for {key} mentioned in the provided text? "
        f"Answer: The special magic numbers for {key} mentioned in the provided text are",
        tuple(values),
        40,
    )


def _multiquery(rng: np.random.Generator) -> _Spec:
    keys, values, needles = _keyed_numbers(rng, 4)
    asked = keys[:2]
    return _Spec(
        "Some special magic numbers are hidden within the following text. Make sure to memorize "
        "them. I will quiz you about the numbers afterwards.\n\n",
        needles,
        f"What are the special magic numbers for {asked[0]} and {asked[1]} mentioned in the "
        f"provided text? Answer: The special magic numbers for {asked[0]} and {asked[1]} "
        "mentioned in the provided text are",
        tuple(values[:2]),
        28,
    )


def _variable_tracking(rng: np.random.Generator) -> _Spec:
    names: list[str] = []
    while len(names) < 4:
        name = "".join(_VAR_LETTERS[i] for i in rng.integers(0, 26, size=5))
        if name not in names:
            names.append(name)
    value = str(int(rng.integers(10_000, 100_000)))
    chain = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))
    ]
    return _Spec(
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n",
        chain,
        f"Question: Find all variables that are assigned the value {value} in the text above. "
        f"Answer: According to the chain(s) of variable assignment in the text above, "
        f"{len(names)} variables are assigned the value {value}, they are:",
        tuple(names),
        32,  # four 5-letter names and separators: up to 28 tokens at one per character
        spread=False,  # in order: each hop after the previous one
    )


TASK_MAKERS: dict[str, Callable[[np.random.Generator], _Spec]] = {
    "niah_number": _niah("number"),
    "niah_word": _niah("word"),
    "niah_uuid": _niah("uuid"),
    "multikey": _multikey,
    "multivalue": _multivalue,
    "multiquery": _multiquery,
    "variable_tracking": _variable_tracking,
}
TASKS = (*TASK_MAKERS, "common_words", "recall")


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'niah_number,recall' -> ('niah_number', 'recall'); 'all' -> every task.

    Raises:
        InputError: an unknown or missing task name.
    """
    return parse_names(spec, TASKS, "task", allow_all=True)


def _place(n_sentences: int, n_needles: int, depth: float, spread: bool, rng) -> list[int]:
    """Insertion indices (before sentence i) for the needles; the first at `depth`."""
    first = int(round(depth * n_sentences))
    if not spread:  # a chain: later hops at random places after the first
        rest = sorted(int(x) for x in rng.integers(first, n_sentences + 1, size=n_needles - 1))
        return [first, *rest]
    return [first] + [int(x) for x in rng.integers(0, n_sentences + 1, size=n_needles - 1)]


def _assemble(instruction: str, sentences: list[str], inserts: list[tuple[int, str]],
              question: str) -> tuple[str, list[tuple[int, int]], str]:  # fmt: skip
    """Prompt text and the character spans of the inserted sentences (in `inserts` order)."""
    by_index: dict[int, list[int]] = {}
    for k, (i, _) in enumerate(inserts):
        by_index.setdefault(i, []).append(k)
    parts, spans, pos = [instruction], [(0, 0)] * len(inserts), len(instruction)
    for i in range(len(sentences) + 1):
        for k in by_index.get(i, []):
            s = inserts[k][1] + " "
            spans[k] = (pos, pos + len(s) - 1)
            parts.append(s)
            pos += len(s)
        if i < len(sentences):
            parts.append(sentences[i] + " ")
            pos += len(sentences[i]) + 1
    q = "\n\n" + question
    return "".join(parts).rstrip() + q, spans, q


def _common_words(context: int, filler: FillerText, rng, count) -> TaskSample:
    """A numbered word list: 5 words appear often, the rest a few times (RULER's CWE)."""
    words = sorted({w.lower() for s in filler.sentences for w in re.findall(r"[A-Za-z]{5,}", s)})
    if len(words) < 60:
        raise InputError("the filler has too few distinct words for common_words; give more text")
    pick = rng.choice(len(words), size=min(len(words), 400), replace=False)
    common, rare = [words[i] for i in pick[:5]], [words[i] for i in pick[5:]]
    head = (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n"
    )
    question = (
        "\nQuestion: What are the 5 most common words in the above list? Answer: The top 5 "
        "words that appear most often in the list are:"
    )
    budget = context - count([head + question])[0]
    per_item = max(1, count([" 100. " + rare[0]])[0])
    n_items = max(30, budget // per_item)
    order = rng.permutation(10 * n_items)
    for _ in range(4):  # shrink the list until the prompt fits the budget
        n_common = max(3, n_items // 10)  # each common word this often; rare ones once or twice
        items = [w for w in common for _ in range(n_common)]
        items += [rare[i % len(rare)] for i in range(max(0, n_items - len(items)))]
        items = [items[i] for i in order[order < len(items)]]
        body = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        prompt = head + body + question
        used = count([prompt])[0]
        if used <= context:
            break
        n_items = max(30, int(n_items * context / used) - 2)
    return TaskSample("common_words", prompt, question, tuple(common), (), 0.5, 40)


def _recall(context: int, filler: FillerText, depth: float, rng, count) -> TaskSample:
    """Recall a sentence of a real text, cued by its beginning: the needle is the text itself."""
    instruction = "Read the following text carefully. You will be asked to recall a part of it.\n\n"
    probe = "Earlier, the text contained a sentence that begins with these words: "
    budget = context - count([instruction + probe * 2])[0] - 24
    sentences = filler.take(budget, rng)
    cands = [i for i, s in enumerate(sentences) if len(re.findall(r"[A-Za-z]{4,}", s)) >= 10]
    if not cands:
        raise InputError("the filler has no sentence long enough for the recall task")
    target = min(cands, key=lambda i: abs(i / len(sentences) - depth) + 1e-3 * rng.random())
    words = sentences[target].split()
    cut = max(4, len(words) // 3)
    cue, rest = " ".join(words[:cut]), words[cut:]
    refs = tuple(
        dict.fromkeys(w.strip(".,;:'\"()") for w in rest if len(w.strip(".,;:'\"()")) >= 4)
    )
    question = f'{probe}"{cue}". Continue that sentence exactly as it appeared. Answer: "{cue}'
    prompt, _, q = _assemble(instruction, sentences, [], question)
    while count([prompt])[0] > context and len(sentences) > target + 1:  # the cue's cost
        sentences.pop()
        prompt, _, q = _assemble(instruction, sentences, [], question)
    start = prompt.find(sentences[target])
    needle = (start, start + len(sentences[target]))
    return TaskSample("recall", prompt, q, refs[:4], (needle,), target / len(sentences), 24)


def make_sample(task: str, context: int, filler: FillerText, depth: float, seed: int,
                count_tokens: Callable[[list[str]], list[int]]) -> TaskSample:  # fmt: skip
    """One seeded sample of `task` with about `context` tokens, first needle at `depth` (0..1).

    Raises:
        InputError: unknown task, depth outside [0, 1], context < 256, too little filler.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise InputError(f"depth must be in [0, 1], got {depth}")
    if context < 256:
        raise InputError(f"context must be >= 256 tokens for the suite, got {context}")
    rng = np.random.default_rng(seed)
    if task == "common_words":
        return _common_words(context, filler, rng, count_tokens)
    if task == "recall":
        return _recall(context, filler, depth, rng, count_tokens)
    spec = TASK_MAKERS[task](rng)
    fixed = count_tokens([spec.instruction + spec.question + " ".join(spec.needles)])[0]
    sentences = filler.take(context - fixed - 8, rng)
    where = _place(len(sentences), len(spec.needles), depth, spec.spread, rng)
    prompt, spans, q = _assemble(spec.instruction, sentences, list(zip(where, spec.needles, strict=False)),
                                 spec.question)  # fmt: skip
    return TaskSample(task, prompt, q, spec.answers, tuple(spans), depth, spec.max_new_tokens)
