"""Why a text got its label: per-word weights by leave-one-word-out occlusion.

A text is split into words at whitespace. Each word is deleted in turn and the shortened
text is scored; the word's weight is how far the predicted label's probability falls
without it (positive: the word supports the label; negative: it argues against it). Only
the ONNX graph is needed, through `Predictor.predict_proba`: every occluded copy of every
text in a group goes through the same length-sorted token-budget batches as scoring.

Only words the model sees are occluded: the text is tokenized once by the predictor's
own tokenizer (truncating at the bundle's max length), and a word counts as seen when it
starts before the end of the last token kept. A word entirely past that cut cannot change
the prediction, so it is not scored and gets weight exactly 0.0 (so does every word past
the first `max_words`). A text of n seen words costs min(n, max_words) + 1 rows of
inference. A predictor without an `encoder` (a test fake) has every word counted as seen.

An int8 predictor that rescores hesitant rows by fp32 (predictor.py) decides once per
text, on the full text as scored: if it was rescored, every occluded copy goes through
fp32, else through int8 alone. Otherwise a copy that crossed the margin would switch
graphs, and the word's weight would include the gap between the two graphs.

`faithfulness` checks the weights mean something: deleting each text's k top-weighted
words must lower the label's probability more than deleting k words picked at random.

Knows nothing about DuckDB, the terminal or personal data; callers mask what they show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Words occluded per text; a longer text's later words get weight 0 (a 128-token bundle
# sees about 90 words of English anyway, and words past the tokenizer's cut get 0 too).
MAX_WORDS = 96
# Occluded copies scored per Predictor call: bounds memory for long row lists.
GROUP_ROWS = 4096
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets in the text
    end: int
    position: int  # 0-based word index
    weight: float


@dataclass(frozen=True)
class Explanation:
    text: str
    label: str
    probability: float
    words: list[Word]
    occluded: int  # the leading words that were deleted in turn; the rest weigh 0.0

    def top(self, k: int) -> list[Word]:
        """The k occluded words with the largest weight, most supportive first."""
        return sorted(self.words[: self.occluded], key=lambda w: -w.weight)[:k]


def split_words(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each whitespace-separated word."""
    return [m.span() for m in _WORD.finditer(text)]


def _without(text: str, spans: list[tuple[int, int]], drop: set[int]) -> str:
    return " ".join(text[s:e] for i, (s, e) in enumerate(spans) if i not in drop)


def _seen_words(predictor, texts: list[str]) -> list[int]:
    """How many leading words of each text reach the model; `texts` are as scored.

    Read from the tokenizer's own offsets (original-text characters, even through a
    normalizer that rewrites links), so truncation is judged exactly as the runtime
    truncates. Words are in order, so the seen ones are a prefix."""
    encoder = getattr(predictor, "encoder", None)
    if encoder is None:  # a fake predictor: no tokenizer to ask, occlude every word
        return [len(split_words(t)) for t in texts]
    cuts = encoder.seen_chars(texts)
    return [
        sum(1 for start, _ in split_words(text) if start < cut)
        for text, cut in zip(texts, cuts, strict=True)
    ]


def _score_all(predictor, variants: list[str], owners: list[tuple[int, int]]) -> np.ndarray:
    """Probabilities of every occluded copy; a rescoring predictor's copies of a text all
    go through the graph its full text was scored by (module docstring)."""
    split = getattr(predictor, "split_rescoring", lambda: None)()  # a test fake has none
    if split is None:
        return _score(predictor, variants)
    fulls = [k for k, (_, j) in enumerate(owners) if j < 0]
    batched = predictor.run_batches(predictor.encoder.encode([variants[k] for k in fulls]))
    rescored = {owners[k][0] for k, r in zip(fulls, batched.rescored, strict=True) if r}
    by_fp32 = np.array([i in rescored for i, _ in owners], dtype=bool)
    probs = np.empty((len(variants), len(predictor.labels)), dtype=np.float32)
    alone, reference = split
    for mask, graph in ((by_fp32, reference), (~by_fp32, alone)):
        if mask.any():
            probs[mask] = _score(graph, [v for v, m in zip(variants, mask, strict=True) if m])
    return probs


def _score(predictor, texts: list[str]) -> np.ndarray:
    out = [
        predictor.predict_proba(texts[i : i + GROUP_ROWS]) for i in range(0, len(texts), GROUP_ROWS)
    ]
    return np.concatenate(out) if out else np.empty((0, len(predictor.labels)), np.float32)


def explain(predictor, texts: list[str], max_words: int = MAX_WORDS) -> list[Explanation]:
    """One `Explanation` per text, in order; empty texts get no words.

    Every word is listed; only the first `max_words` of those the model sees (see the
    module docstring) are occluded, the rest get weight exactly 0.0."""
    spans = [split_words(t) for t in texts]
    # The full text as scored: its words joined by single spaces, like every variant.
    fulls = [_without(text, sp, set()) for text, sp in zip(texts, spans, strict=True)]
    seen = _seen_words(predictor, fulls)
    variants: list[str] = []
    owners: list[tuple[int, int]] = []  # (text index, word index) per occluded copy
    for i, (text, sp) in enumerate(zip(texts, spans, strict=True)):
        variants.append(fulls[i])
        owners.append((i, -1))
        for j in range(min(seen[i], max_words)):
            variants.append(_without(text, sp, {j}))
            owners.append((i, j))
    probs = _score_all(predictor, variants, owners)
    full: dict[int, np.ndarray] = {}
    drops: dict[int, dict[int, float]] = {i: {} for i in range(len(texts))}
    for (i, j), p in zip(owners, probs, strict=True):
        if j < 0:
            full[i] = p
        else:
            best = int(full[i].argmax())
            drops[i][j] = float(full[i][best] - p[best])
    out = []
    for i, (text, sp) in enumerate(zip(texts, spans, strict=True)):
        best = int(full[i].argmax())
        words = [Word(text[s:e], s, e, j, drops[i].get(j, 0.0)) for j, (s, e) in enumerate(sp)]
        occluded = min(seen[i], max_words)
        out.append(Explanation(text, predictor.labels[best], float(full[i][best]), words, occluded))
    return out


@dataclass(frozen=True)
class Faithfulness:
    rows: int  # texts with more than k occluded words
    k: int
    top_drop: float  # mean fall of the label's probability, top-k words deleted
    random_drop: float  # the same, k random words deleted
    gap: float  # top_drop - random_drop; positive when the weights are faithful

    def summary(self) -> str:
        return (
            f"deleting the top {self.k} words lowers the label's probability by "
            f"{self.top_drop:.4f} on average, {self.k} random words by {self.random_drop:.4f}: "
            f"gap {self.gap:+.4f} over {self.rows:,} texts"
        )


def faithfulness(
    predictor, explanations: list[Explanation], k: int = 3, seed: int = 0
) -> Faithfulness:
    """Top-k deletion against random-k deletion on texts with more than k occluded words.

    Both draw from the occluded words only: deleting a word past the tokenizer's cut
    changes nothing, so counting those would flatter the weights."""
    rng = np.random.default_rng(seed)
    kept = [e for e in explanations if e.occluded > k]
    top_texts, random_texts = [], []
    for e in kept:
        spans = [(w.start, w.end) for w in e.words]
        top = {w.position for w in e.top(k)}
        rand = set(rng.choice(e.occluded, size=k, replace=False).tolist())
        top_texts.append(_without(e.text, spans, top))
        random_texts.append(_without(e.text, spans, rand))
    if not kept:
        return Faithfulness(0, k, 0.0, 0.0, 0.0)
    index = [predictor.labels.index(e.label) for e in kept]
    base = np.array([e.probability for e in kept])
    rows = np.arange(len(kept))
    top_drop = float(np.mean(base - _score(predictor, top_texts)[rows, index]))
    random_drop = float(np.mean(base - _score(predictor, random_texts)[rows, index]))
    return Faithfulness(len(kept), k, top_drop, random_drop, top_drop - random_drop)
