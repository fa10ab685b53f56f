"""Which labels make the index: the positive and the negative side, one model's labels.

`pick_labels` takes `--positive`/`--negative` as given (exact spelling: they are values
of `scores.label`; several comma-separated ones make a graded side, `positive,very
positive`, whose count is the sum of its labels' rows), else one default label per side,
matched in any letter case (a model trained on `Positive`/`negative` needs no flags);
`left_out_note` names the graded labels a default side leaves out. Both sides come from
ONE model's labels: when two models with different schemes scored the table, pairing
`bullish` from one with `negative` from the other would make an index neither model has.
`check_one_scheme` then refuses latest scores from a model that lacks an index label, and
`check_label_columns` two spellings of one label (they would share a trend column).

`models` is what the stage reads: [(model version, its labels, rows)], newest first.
"""

from __future__ import annotations

from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import sanitize

POSITIVE_DEFAULTS = ("positive", "bullish")
NEGATIVE_DEFAULTS = ("negative", "bearish")


def union_labels(models) -> list[str]:
    """Every model's labels, newest model's first, each once."""
    labels: list[str] = []
    for _, model_labels, _ in models:
        labels += [lab for lab in model_labels if lab not in labels]
    return labels


def pick_labels(
    models, positive: str | None = None, negative: str | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positive labels, negative labels) for the index: sides one model has.

    Among the models' pairs the one earliest in the defaults wins (positive/negative
    before bullish/bearish, as the defaults read), the newest model's on a tie.
    """
    labels = union_labels(models)
    given_pos = _given(positive, "--positive", labels)
    given_neg = _given(negative, "--negative", labels)
    pairs = []
    for _, model_labels, _ in models:
        pos = _side(given_pos, POSITIVE_DEFAULTS, model_labels)
        neg = _side(given_neg, NEGATIVE_DEFAULTS, model_labels)
        if pos == neg and pos is not None:  # `--negative bullish` meets the default bullish
            raise MarketpulseError(
                f"--positive and --negative would both be {','.join(pos)!r}, an index of 0 "
                "everywhere; pass both --positive and --negative with two different labels"
            )
        shared = [lab for lab in pos or () if lab in (neg or ())]
        if shared:
            raise MarketpulseError(
                f"--positive and --negative would both count {', '.join(map(repr, shared))}; "
                "pass both --positive and --negative with two different labels (each label on "
                "one side at most)"
            )
        if pos is not None and neg is not None:
            pairs.append((pos, neg))
    if pairs:  # min() keeps the first (newest) of equal ranks
        return min(
            pairs,
            key=lambda p: (_rank(p[0][0], POSITIVE_DEFAULTS), _rank(p[1][0], NEGATIVE_DEFAULTS)),
        )
    for given, defaults, flag in (
        (positive, POSITIVE_DEFAULTS, "--positive"),
        (negative, NEGATIVE_DEFAULTS, "--negative"),
    ):
        if given is None and _default(defaults, labels) is None:
            raise MarketpulseError(
                f"the model's labels ({', '.join(labels)}) include none of "
                f"{', '.join(defaults)}; pass {flag} with one of them"
            )
    schemes = "; ".join(f"{version} ({', '.join(labs)})" for version, labs, _ in models)
    _check_spellings(models, given_pos, given_neg, schemes)
    which = (
        f"both the --positive and the --negative labels ({','.join(given_pos)} and "
        f"{','.join(given_neg)})"
        if given_pos and given_neg
        else "both a positive and a negative label"
    )
    raise MarketpulseError(
        f"no one model has {which} among the models behind "
        f"the latest scores ({schemes}); pass --positive and --negative with two labels of "
        "one model, and score the whole table with that model"
    )


def _check_spellings(models, given_pos, given_neg, schemes: str) -> None:
    """Refuse flags naming labels of several models, none of which has a whole side: two
    spellings of one label (`positive,Positive`, one per model) most often. The index
    alone would count both, but the trend table has a column per label, and two
    spellings make one (n_positive) that would count one of them only (see
    `check_label_columns`), so both sides come from one model's labels."""
    sides = [
        (flag, given)
        for flag, given in (("--positive", given_pos), ("--negative", given_neg))
        if given is not None and not any(set(given) <= set(labs) for _, labs, _ in models)
    ]
    if not sides:
        return
    columns: dict[str, list[str]] = {}
    for _, given in sides:
        for lab in given:
            columns.setdefault("n_" + sanitize(lab), []).append(lab)
    twice = [(c, labs) for c, labs in columns.items() if len(labs) > 1]
    verb = "s" if len(sides) == 1 else ""
    what = (
        f"spell{verb} a label two ways, as two models do ("
        + "; ".join(
            f"{' and '.join(map(repr, labs))} would share trend column {c}" for c, labs in twice
        )
        + ")"
        if twice
        else f"name{verb} labels of different models"
    )
    flags = " and ".join(f"{flag} {','.join(given)!r}" for flag, given in sides)
    newest = models[0][1]
    pos, neg = _default(POSITIVE_DEFAULTS, newest), _default(NEGATIVE_DEFAULTS, newest)
    defaults = (
        f" (or leave them out: the defaults pick its {pos!r} and {neg!r})" if pos and neg else ""
    )
    raise MarketpulseError(
        f"{flags} {what}, and trends takes both sides from one model's labels ({schemes}); "
        f"score the whole table with one model (the newest, {models[0][0]}, without --limit "
        f"or --where), then pass --positive/--negative with that model's labels only{defaults}"
    )


def left_out_note(models, positive, negative, given_pos, given_neg) -> str:
    """A note naming the labels a default side leaves out, '' without any.

    A default side is one label, but a graded model (`very positive`, `strongly bullish`)
    has more that carry the side's word: their rows would count in volume only.
    """
    labels = union_labels(models)
    left: list[str] = []
    flags: list[str] = []
    for picked, given, flag in (
        (positive, given_pos, "--positive"),
        (negative, given_neg, "--negative"),
    ):
        if given is not None:
            continue
        word = picked[0].casefold()
        more = [lab for lab in labels if lab not in picked and word in lab.casefold()]
        if more:
            left += more
            flags.append(f'{flag} "{",".join([*picked, *more])}"')
    if not left:
        return ""
    return (
        f"index = {index_formula(','.join(positive), ','.join(negative))}: "
        f"{', '.join(map(repr, left))} count in volume only; pass {' '.join(flags)} to add them"
    )


def index_formula(positive: str, negative: str) -> str:
    """`(positive - negative) / volume`, a side of several labels (comma-joined) as a sum."""
    pos = " + ".join(positive.split(","))
    neg = "".join(f" - {lab}" for lab in negative.split(","))
    return f"({pos}{neg}) / volume"


def check_one_scheme(source: str, models, positive, negative) -> None:
    """Refuse latest scores whose models do not all have every index label.

    A row from a model without them counts in `volume` but on neither side of the index,
    which would quietly pull the index towards 0 (say bullish/bearish rows among
    positive/negative ones, after a new model scored part of the table).
    """
    needed = (*positive, *negative)
    lacking = [(v, labels, n) for v, labels, n in models if not set(needed) <= set(labels)]
    if not lacking:
        return
    version, labels, n = lacking[0]
    missing = [lab for lab in needed if lab not in labels]
    folded = {m.casefold() for m in missing}
    near = [lab for lab in labels if lab.casefold() in folded]
    others = f" (and {len(lacking) - 1:,} other models)" if len(lacking) > 1 else ""
    message = (
        f"the latest scores of {source!r} mix label schemes: {n:,} rows come from model "
        f"{version} ({', '.join(labels)}){others}, which has no "
        f"{' or '.join(repr(m) for m in missing)} label"
    )
    if near:
        message += f" (it spells it {', '.join(map(repr, near))}; labels match case exactly)"
    message += (
        f"; score the whole table with one model (the newest, {models[0][0]}, without "
        "--limit or --where)"
    )
    common = [lab for lab in models[0][1] if all(lab in labs for _, labs, _ in models)]
    if len(common) >= 2:
        message += (
            f", or pass --positive/--negative with labels every model has ({', '.join(common)})"
        )
    raise MarketpulseError(message)


def check_label_columns(source: str, models) -> None:
    """Refuse two labels that make one trend column (`n_<label>`: sanitized, lower case).

    One model's labels never collide (export refuses them), but two models may spell a
    label two ways (`Neutral`, `neutral`): the trend table would get `n_neutral` twice,
    DuckDB would rename the second `n_neutral_1`, and both would count the first label.
    """
    seen: dict[str, tuple[str, str]] = {}
    for version, labels, _ in models:
        for lab in labels:
            column = "n_" + sanitize(lab)
            first = seen.setdefault(column, (lab, version))
            if first[0] != lab:
                raise MarketpulseError(
                    f"the latest scores of {source!r} come from models that spell a label two "
                    f"ways: {first[0]!r} (model {first[1]}) and {lab!r} (model {version}) "
                    f"would share trend column {column}; score the whole table with one model "
                    f"(the newest, {models[0][0]}, without --limit or --where)"
                )


def _given(given: str | None, flag: str, labels: list[str]) -> tuple[str, ...] | None:
    """A flag's labels: the whole value when it is a label, else its comma-separated parts."""
    if given is None:
        return None
    if given in labels:
        return (given,)
    parts = tuple(dict.fromkeys(p.strip() for p in given.split(",") if p.strip()))
    for part in parts or (given,):
        if part not in labels:
            raise MarketpulseError(_not_a_label(part, flag, labels))
    return parts


def _side(
    given: tuple[str, ...] | None, defaults: tuple[str, ...], labels: list[str]
) -> tuple[str, ...] | None:
    """The given labels if this model has them all, else its first default; None without."""
    if given is not None:
        return given if set(given) <= set(labels) else None
    found = _default(defaults, labels)
    return None if found is None else (found,)


def _default(defaults: tuple[str, ...], labels: list[str]) -> str | None:
    """The first default among `labels`: spelled exactly, else in another letter case."""
    for name in defaults:
        if name in labels:
            return name
        same = [lab for lab in labels if lab.casefold() == name.casefold()]
        if same:
            return same[0]
    return None


def _rank(label: str, defaults: tuple[str, ...]) -> int:
    """Where a picked label stands in the defaults (0 for a given one)."""
    folded = [d.casefold() for d in defaults]
    return folded.index(label.casefold()) if label.casefold() in folded else 0


def _not_a_label(given: str, flag: str, labels: list[str]) -> str:
    same = [lab for lab in labels if lab.casefold() == given.casefold()]
    if same:
        return (
            f"{flag} {given!r} is not a label of the model (labels: {', '.join(labels)}; they "
            f"match case exactly); pass {flag} {same[0]!r}"
        )
    return (
        f"{flag} {given!r} is not a label of the model (labels: {', '.join(labels)}); "
        f"pass {flag} with one of them, or several separated by commas"
    )
