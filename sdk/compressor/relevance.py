"""Query relevance for SemToken's query mode, in numpy: sentences, their relevance, and the
query arguments `spans.find_spans` takes.

Torch-free: shared by the PyTorch compressor and the runtime so both keep the same sentences.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from semedge.config import CompressionConfig

__all__ = [
    "column_median",
    "prompt_features",
    "query_similarity",
    "sentence_units",
    "unit_relevance",
    "query_scores",
    "implicit_query",
    "implicit_query_scores",
    "question_start",
    "bm25_scores",
    "states_needed",
]

IMPLICIT_QUERY_TOKENS = 64  # at most this many of the last paragraph's tokens act as the query
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


def prompt_features(hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalized rows, the prompt's per-dimension median): what the relevance scores compare
    the query with, computed once per prompt (the median is the costly part).

    The rows are normalize_features' (centred on the median, unit length); rows the encoder
    did not compute (NaN, see states_needed) stay NaN and are left out of the median. In
    float32, as the encoders give them (a third of the float64 time; a ranking does not need
    more).
    """
    x = np.asarray(hidden, dtype=np.float32)
    done = ~np.isnan(x).any(axis=1)
    median = column_median(x if done.all() else x[done])
    if x.shape[0] > 1:
        x = x - median
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), median


def column_median(x: np.ndarray) -> np.ndarray:
    """np.median(x, axis=0) of a NaN-free (T, E) array, the same values in half the time: one
    partition at T // 2 (the lower middle of an even T is the largest value below it) instead of
    np.median's two."""
    n = x.shape[0]
    if n == 0:
        return np.median(x, axis=0)  # NaN, as NumPy gives (with its warning)
    half = n // 2
    part = np.partition(x, half, axis=0)
    if n % 2:
        return part[half]
    return (part[:half].max(axis=0) + part[half]) / x.dtype.type(2)


def states_needed(text: str, offsets: np.ndarray, config: CompressionConfig) -> np.ndarray | None:
    """(T,) bool: the tokens whose encoder states the span search reads, or None for all.

    When merged spans are dropped with ranked sentences (config.drops_merged(), the default),
    the states serve only the sentences' relevance, and the recency window is kept whatever it
    scores: so only the sentences that begin before the window need states, plus, for the
    implicit query (no `query`), the prompt's last paragraph. With a reading order
    (config.reorders_ranked(): a query is given), the window's sentences before the question
    need them too: they compete with the far ones to be read just before the question
    (budget.reading_order; unscored, a needle in the window would stay behind). Everything else
    (merging, the minilm encoder) reads every token. One rule for the PyTorch compressor and
    the runtime.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    T = len(offsets)
    ranked = config.ranks_sentences() and config.query_share > 0
    recent = config.recency_tokens(T)
    if config.encoder != "lm" or not (ranked and config.drops_merged()) or not 0 < recent < T:
        return None
    units = sentence_units(text, offsets)
    cut = int(np.searchsorted(units, units[T - recent - 1], side="right"))
    needed = np.zeros(T, dtype=bool)
    if config.reorders_ranked():
        cut = max(cut, question_start(text, offsets) or 0)
    needed[:cut] = True
    if not config.query:
        needed[implicit_query(text, offsets)] = True
    return needed


def _query_rows(query_states: np.ndarray, median: np.ndarray) -> np.ndarray:
    q = np.asarray(query_states, dtype=np.float32) - median
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def query_similarity(
    hidden: np.ndarray, query_states: np.ndarray, prepared: tuple | None = None
) -> np.ndarray:
    """(T,) cosine of each prompt token to the query, for query-aware merging.

    The query's encoder states are centred on the prompt's median (like the prompt's own
    features), scaled to unit rows (so one sink token's huge state cannot dominate), then
    mean-pooled. Shared by the PyTorch compressor and the runtime. (T, E), (Q, E) -> (T,).
    `prepared`: prompt_features(hidden), when the caller has it.
    """
    h, median = prepared if prepared is not None else prompt_features(hidden)
    qv = _query_rows(query_states, median).mean(axis=0)
    return h @ (qv / max(float(np.linalg.norm(qv)), 1e-12))


_SENTENCE_END = (".", "!", "?", "\n")


def sentence_units(text: str, offsets: np.ndarray) -> np.ndarray:
    """(T,) int64 sentence index of each token: a sentence ends after '.', '!', '?' or a newline.

    Args:
        text: the text `offsets` index into.
        offsets: (T, 2) character [start, end) of each token.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ends = np.zeros(len(text) + 1, dtype=np.int64)
    for i, c in enumerate(text):
        if c in _SENTENCE_END and (i + 1 == len(text) or text[i + 1].isspace() or c == "\n"):
            ends[i + 1] = 1
    before = np.cumsum(ends)  # sentence ends at or before each character boundary
    return before[np.clip(offsets[:, 0], 0, len(text))].astype(np.int64)


def unit_relevance(
    hidden: np.ndarray,
    query_states: np.ndarray,
    units: np.ndarray,
    ids: np.ndarray,
    query_ids: np.ndarray,
    prepared: tuple | None = None,
) -> np.ndarray:
    """(U,) relevance of each unit (sentence) to the query: IDF-weighted MaxSim.

    score(u) = sum_j w_j max_{i in u} sim(q_j, t_i) / sum_j w_j, over the query's tokens j, as
    ColBERT scores passages: sim is 1 for the same token id, else the cosine of the encoder
    states (centred on the prompt's median like normalize_features), so a sentence matches by
    its words and by what the encoder finds alike; w_j = log(1 + U / (1 + units whose tokens
    include q_j's id)), so tokens that occur everywhere (function words, the instruction's
    words) count little. Shared by the PyTorch compressor and the runtime.

    Args:
        hidden: (T, E) encoder states of the prompt.
        query_states: (Q, E) encoder states of the query.
        units: (T,) non-decreasing unit id per token (sentence_units).
        ids: (T,) prompt token ids; query_ids: (Q,) query token ids.
        prepared: prompt_features(hidden), when the caller has it.
    """
    h, median = prepared if prepared is not None else prompt_features(hidden)
    q = _query_rows(query_states, median)
    units = np.asarray(units, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
    sim = np.maximum.reduceat(h @ q.T, starts, axis=0)  # (U', Q) best match of q_j per unit
    n_units = len(starts)
    unit_of = np.repeat(np.arange(n_units), np.diff(np.append(starts, len(units))))
    pairs = np.unique(np.stack([unit_of, np.asarray(ids, np.int64)], axis=1), axis=0)
    vocab, df = np.unique(pairs[:, 1], return_counts=True)
    qid = np.asarray(query_ids, dtype=np.int64)
    if len(qid) != q.shape[0]:  # states of another tokenizer (minilm): no id matching
        return _scatter_units(units, starts, sim.mean(axis=1))
    seen = np.searchsorted(vocab, qid).clip(0, max(len(vocab) - 1, 0))
    doc_freq = np.where(vocab[seen] == qid, df[seen], 0) if len(vocab) else np.zeros(len(qid))
    w = np.log1p(n_units / (1.0 + doc_freq))
    for j, token in enumerate(qid.tolist()):  # the same token id is a perfect match
        sim[pairs[pairs[:, 1] == token, 0], j] = 1.0
    return _scatter_units(units, starts, sim @ w / max(float(w.sum()), 1e-12))


def bm25_scores(ids: np.ndarray, units: np.ndarray, query_ids: np.ndarray,
                k1: float = 1.2, b: float = 0.75) -> np.ndarray:  # fmt: skip
    """(U,) Okapi BM25 of each unit (sentence) for the query, over token ids."""
    ids, units = np.asarray(ids, np.int64), np.asarray(units, np.int64)
    n_units = int(units.max()) + 1 if len(units) else 0
    length = np.bincount(units, minlength=n_units).astype(np.float64)
    avg = max(float(length[length > 0].mean()) if n_units else 1.0, 1e-9)
    scores = np.zeros(n_units)
    present = length > 0
    for q in np.unique(np.asarray(query_ids, np.int64)):
        tf = np.bincount(units[ids == q], minlength=n_units).astype(np.float64)
        df = float((tf > 0).sum())
        if df == 0:
            continue
        idf = np.log(1 + (present.sum() - df + 0.5) / (df + 0.5))
        scores += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
    scores[~present] = -np.inf
    return scores


def rank_fusion(*scores: np.ndarray, k: float = 60.0) -> np.ndarray:
    """(U,) reciprocal-rank fusion: sum of 1 / (k + rank) over the score arrays (rank 1 = best;
    ties share their best rank); -inf (or NaN) in any array stays -inf."""
    arrays = [np.asarray(s, dtype=np.float64) for s in scores]
    out = np.zeros(len(arrays[0]))
    for s in arrays:
        out += 1.0 / (k + 1 + np.searchsorted(np.sort(-s), -s, side="left"))
    return np.where(np.logical_or.reduce([~np.isfinite(s) for s in arrays]), -np.inf, out)


def _scatter_units(units: np.ndarray, starts: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(U,) scores by unit id from one score per run of equal ids (-inf for absent ids)."""
    full = np.full(int(units.max()) + 1 if len(units) else 0, -np.inf)
    full[units[starts]] = scores
    return full


def query_scores(
    hidden: np.ndarray,
    query_states: np.ndarray,
    ids: np.ndarray,
    query_ids: np.ndarray,
    text: str,
    offsets: np.ndarray,
    config: CompressionConfig,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Everything query-aware merging needs, for find_spans: (query_sim, (units, scores)).

    query_sim: (T,) cosine to the mean query (raises tau: relevant tokens merge less);
    units/scores: sentences and their relevance (config.query_relevance: "bm25" = Okapi BM25
    over token ids, as the `retrieve` baseline ranks; "maxsim" =
    unit_relevance, "cosine" = the best query_sim in the sentence). The one query rule, shared
    by the PyTorch compressor and the runtime.
    """
    prepared = prompt_features(hidden)
    sim = np.nan_to_num(query_similarity(hidden, query_states, prepared), nan=-1.0)
    units = sentence_units(text, offsets)
    if config.query_relevance == "cosine":
        starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
        scores = _scatter_units(units, starts, np.maximum.reduceat(sim, starts))
    elif config.query_relevance == "bm25":
        scores = bm25_scores(ids, units, query_ids)
    else:
        scores = unit_relevance(hidden, query_states, units, ids, query_ids, prepared)
        if config.query_relevance == "hybrid":
            scores = rank_fusion(scores, bm25_scores(ids, units, query_ids))
    scores = np.where(np.isnan(scores), -np.inf, scores)  # units with no states: never ranked
    return sim, (units, _without_empty_units(scores, units, text, offsets))


def _without_empty_units(scores: np.ndarray, units: np.ndarray, text: str,
                         offsets: np.ndarray) -> np.ndarray:  # fmt: skip
    """Scores with -inf for units that hold no letter or digit (blank lines, lone punctuation):
    nothing in them can be relevant, and kept as filler they teach the LM to repeat them."""
    offsets = np.clip(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), 0, len(text))
    seen = np.concatenate([[0], np.cumsum(_alnum_chars(text))])  # alnum chars before each one
    has_word = seen[offsets[:, 1]] > seen[offsets[:, 0]]
    words = np.bincount(units, weights=has_word, minlength=len(scores))[: len(scores)]
    return np.where(words > 0, scores, -np.inf)


def _alnum_chars(text: str) -> np.ndarray:
    """(len(text),) bool str.isalnum per character (ASCII by table, the rest per distinct char)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.array([chr(c).isalnum() for c in range(128)])
    out = table[np.minimum(codes, 127)] & (codes < 128)
    wide = np.flatnonzero(codes >= 128)
    if len(wide):
        kinds, inverse = np.unique(codes[wide], return_inverse=True)
        out[wide] = np.array([chr(int(c)).isalnum() for c in kinds])[inverse]
    return out


def question_start(text: str, offsets: np.ndarray) -> int | None:
    """Index of the token that opens the prompt's last blank line (the break before its last
    paragraph, where a question sits): ranked sentences are read just before it when
    CompressionConfig.reorders_ranked(), so the break still separates them from the question.
    None without a blank line (no paragraph to put them before)."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    breaks = [m.start() for m in _BLANK_LINE.finditer(text.rstrip())]
    if not breaks:
        return None
    at = int(np.searchsorted(offsets[:, 1], breaks[-1], side="right"))  # the token holding it
    return at if 0 < at < len(offsets) else None


def implicit_query(text: str, offsets: np.ndarray, max_tokens: int = IMPLICIT_QUERY_TOKENS):
    """(k,) token indices of the prompt's last paragraph (after its last blank line; trailing
    blanks left out), at most its last `max_tokens`: where a prompt usually asks what it wants
    (the question and its answer prefix, the user's turn). Without a blank line, the last
    `max_tokens` tokens.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    body = text.rstrip()
    breaks = [m.end() for m in _BLANK_LINE.finditer(body)]
    start = int(np.searchsorted(offsets[:, 0], breaks[-1] if breaks else 0, side="left"))
    end = int(np.searchsorted(offsets[:, 0], len(body), side="left"))
    if end <= start:
        start, end = 0, len(offsets)
    return np.arange(max(start, end - max_tokens), end, dtype=np.int64)


def implicit_query_scores(
    hidden: np.ndarray, ids: np.ndarray, text: str, offsets: np.ndarray, config: CompressionConfig
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """query_scores with the prompt's own last paragraph (implicit_query) as the query: its tokens'
    states come from the prompt's encoding, so this costs no extra encoder pass."""
    tail = implicit_query(text, offsets)
    ids = np.asarray(ids, dtype=np.int64)
    return query_scores(hidden, hidden[tail], ids, ids[tail], text, offsets, config)
