"""`marketpulse evaluate` over several domains: per-domain tables, baselines, gaps, label maps."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import duckdb
import pytest
from click.testing import CliRunner
from conftest import AMAZON, TINY_LABELS, TWITTER, require_shared

from marketpulse.checkpoint import write_metrics
from marketpulse.cli import main
from marketpulse.metrics import classification_metrics

pytest.importorskip("torch")

NEWS = {"bearish": 2, "bullish": 7, "neutral": 3}  # majority bullish, 7 of 12
REVIEWS = {"positive": 3, "negative": 5, "meh": 2}  # majority negative -> bearish, 5 of 10
CSV_LABELS = [0, 0, 0, 0, 1, 2, 2, 2]  # integer labels: bearish 4 of 8
REVIEW_MAP = "reviews:positive=bullish,negative=bearish,meh=neutral"
REVIEWS_SQL = "reviews=SELECT review AS body, stars AS tag FROM reviews"


@pytest.fixture(scope="module")
def domains_db(tmp_path_factory):
    """news(body, tag) with the model's labels; reviews(review, stars) with their own."""
    path = tmp_path_factory.mktemp("domains") / "domains.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE news (body VARCHAR, tag VARCHAR)")
    con.execute("CREATE TABLE reviews (review VARCHAR, stars VARCHAR)")
    for table, counts in (("news", NEWS), ("reviews", REVIEWS)):
        rows = [
            (f"{table} {label} item {i}", label) for label, n in counts.items() for i in range(n)
        ]
        con.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
    con.close()
    return str(path)


@pytest.fixture(scope="module")
def int_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "forum_posts.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["body", "tag"])
        writer.writerows((f"forum post number {i}", y) for i, y in enumerate(CSV_LABELS))
    return str(path)


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint plus a metrics.json whose test figures are known."""
    out = tmp_path_factory.mktemp("with_metrics") / "model"
    shutil.copytree(tiny_checkpoint, out)
    truth = ["bearish", "bullish", "neutral", "neutral"]
    test = classification_metrics(truth, ["bearish", "neutral", "neutral", "neutral"], TINY_LABELS)
    write_metrics(out, {"test": test}, labels=TINY_LABELS, max_length=16, base_model=None)
    return out, test


def majority_baseline(labels: list[str], n_classes: int = len(TINY_LABELS)) -> tuple[float, float]:
    """(accuracy, macro-F1) of predicting the most frequent label for every row."""
    top = max(Counter(labels).values())
    precision = top / len(labels)  # every row is predicted as the majority class
    f1 = 2 * precision / (precision + 1)  # whose recall is 1; the other classes score 0
    return top / len(labels), f1 / n_classes


def _run(*args):
    return CliRunner().invoke(main, ["evaluate", *args])


def _base(model, db):
    return ["--model", str(model), "--db", db, "--text-col", "body", "--label-col", "tag"]


def test_two_domains_give_two_tables_and_a_summary(
    trained_checkpoint, domains_db, tmp_path, monkeypatch
):
    from marketpulse.train import predict

    loads = []
    real_load = predict.load_model
    monkeypatch.setattr(
        predict, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k)
    )
    model, test = trained_checkpoint
    report = tmp_path / "eval.json"
    args = [*_base(model, domains_db), "--table", "news", "--domain", REVIEWS_SQL]
    result = _run(*args, "--label-map", REVIEW_MAP, "--device", "cpu", "--out", str(report))
    assert result.exit_code == 0, result.output
    assert loads == [1]  # one model for both domains

    saved = json.loads(report.read_text())
    assert [d["name"] for d in saved["domains"]] == ["news", "reviews"]
    assert saved["reference"]["kind"] == "training"
    assert saved["reference"]["accuracy"] == pytest.approx(test["accuracy"])
    truth = {
        "news": [label for label, n in NEWS.items() for _ in range(n)],
        "reviews": ["bullish"] * 3 + ["bearish"] * 5 + ["neutral"] * 2,
    }
    for domain, row in zip(saved["domains"], saved["summary"], strict=True):
        labels = truth[domain["name"]]
        m = domain["metrics"]
        supports = {k: v["support"] for k, v in m["per_class"].items()}
        assert supports == {k: labels.count(k) for k in TINY_LABELS}
        accuracy, macro_f1 = majority_baseline(labels)
        assert row["baseline_accuracy"] == pytest.approx(accuracy)
        assert row["baseline_macro_f1"] == pytest.approx(macro_f1)
        assert row["rows"] == len(labels) and row["macro_f1"] == m["macro_f1"]
        assert row["gap_accuracy"] == pytest.approx(m["accuracy"] - test["accuracy"])
        assert row["gap_macro_f1"] == pytest.approx(m["macro_f1"] - test["macro_f1"])
        assert domain["gap"]["macro_f1"] == row["gap_macro_f1"]

    out = result.stdout
    assert out.count("confusion matrix") == 2
    assert "== news: 12 rows from table news" in out and "== reviews: 10 rows from query" in out
    assert "gap = domain minus training (metrics.json test split)" in out
    news = saved["summary"][0]
    line = next(x for x in out.splitlines() if x.startswith("news "))
    assert line.split() == [
        "news",
        "12",
        f"{news['accuracy']:.4f}",
        f"{news['macro_f1']:.4f}",
        f"{7 / 12:.4f}",
        f"{news['baseline_macro_f1']:.4f}",
        f"{news['gap_accuracy']:+.4f}",
        f"{news['gap_macro_f1']:+.4f}",
    ]
    assert any(
        x.startswith("(training) ") and f"{test['accuracy']:.4f}" in x for x in out.splitlines()
    )


def test_without_training_metrics_the_first_domain_is_the_reference(
    tiny_bundle, domains_db, int_csv, tmp_path
):
    args = [*_base(tiny_bundle.path, domains_db), "--table", "news", "--name", "headlines"]
    result = _run(*args, "--domain", f"forum={int_csv}", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)
    assert saved["kind"] == "bundle" and saved["reference"]["kind"] == "first_domain"
    assert saved["reference"]["name"] == "headlines"
    first, forum = saved["summary"]
    assert first["domain"] == "headlines" and first["gap_macro_f1"] == 0.0
    assert forum["gap_accuracy"] == pytest.approx(forum["accuracy"] - first["accuracy"])
    # integer labels of a --domain file are named by the model's label order
    named = [TINY_LABELS[y] for y in CSV_LABELS]
    supports = {k: v["support"] for k, v in saved["domains"][1]["metrics"]["per_class"].items()}
    assert supports == {k: named.count(k) for k in TINY_LABELS}
    assert forum["baseline_accuracy"] == pytest.approx(majority_baseline(named)[0])

    result = _run(*args, "--domain", f"forum={int_csv}")
    assert "gap = domain minus 'headlines' (the model records no training test metrics)" in (
        result.stdout
    )


def test_a_bundle_gap_uses_the_macro_f1_its_manifest_records(tiny_bundle, domains_db, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["checks"]["pytorch"] = {"rows": 9, "macro_f1": 0.4}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    args = [*_base(bundle, domains_db), "--table", "news", "--domain", REVIEWS_SQL]
    result = _run(*args, "--label-map", REVIEW_MAP, "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)
    assert saved["reference"]["macro_f1"] == 0.4 and saved["reference"]["accuracy"] is None
    for row in saved["summary"]:
        assert row["gap_macro_f1"] == pytest.approx(row["macro_f1"] - 0.4)
        assert row["gap_accuracy"] is None

    text = _run(*args, "--label-map", REVIEW_MAP).stdout
    training = next(x for x in text.splitlines() if x.startswith("(training) "))
    assert training.split() == ["(training)", "9", "-", "0.4000", "-", "-", "-", "-"]


def test_label_map_without_domains_keeps_the_single_report(trained_checkpoint, domains_db):
    model, _ = trained_checkpoint
    query = "SELECT review AS body, stars AS tag FROM reviews"
    mapping = "positive=bullish,negative=bearish,meh=neutral"
    result = _run(*_base(model, domains_db), "--query", query, "--label-map", mapping, "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)
    assert "domains" not in saved and saved["rows"]["used"] == 10
    supports = {k: v["support"] for k, v in saved["metrics"]["per_class"].items()}
    assert supports == {"bearish": 5, "bullish": 3, "neutral": 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--domain", "reviews"], "--domain 'reviews' is not NAME=SOURCE"),
        (["--domain", "=x.csv"], "is not NAME=SOURCE"),
        (["--domain", "my reviews=x.csv"], "is not NAME=SOURCE"),
        (["--domain", "news=SELECT 1"], "domain name 'news' is used twice"),
        (["--domain", "x=/nonexistent/x.csv"], "domain 'x': input file /nonexistent/x.csv not"),
        (
            ["--domain", REVIEWS_SQL],  # the fix for a model's labels is a map, not --label-names
            "domain 'reviews': labels meh, negative, positive in column 'tag' are not among "
            "the model's labels (bearish, bullish, neutral); map them onto the model's with "
            "--label-map meh=LABEL, or leave those rows out with a filtering --query",
        ),
        (["--label-map", "positive"], "--label-map 'positive' is not [DOMAIN:]FROM=TO"),
        (["--label-map", "other:a=b"], "--label-map names domain 'other'"),
        (
            ["--domain", REVIEWS_SQL, "--label-map", "positive=bullish,negative=bearish"],
            "domain 'reviews': label meh is not among the model's labels (bearish, bullish, "
            "neutral) after --label-map; map them with --label-map meh=LABEL",
        ),
    ],
)
def test_bad_domain_flags_give_one_line_errors(extra, message, trained_checkpoint, domains_db):
    model, _ = trained_checkpoint
    result = _run(*_base(model, domains_db), "--table", "news", *extra)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


def test_a_missing_domain_file_or_bad_domain_sql_names_domain(
    trained_checkpoint, domains_db, tmp_path
):
    model, _ = trained_checkpoint
    missing = tmp_path / "missing_reviews.csv"
    result = _run(*_base(model, domains_db), "--table", "news", "--domain", f"reviews={missing}")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: domain 'reviews': input file {missing} not found; "
        "pass --domain with an existing file"
    ]
    bad_sql = "reviews=SELECT review AS body, stars AS tag FROM no_such_table"
    result = _run(*_base(model, domains_db), "--table", "news", "--domain", bad_sql)
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "domain 'reviews': --domain failed: " in result.output and "--query" not in result.output


def test_name_needs_a_table_query_or_input(trained_checkpoint, domains_db):
    model, _ = trained_checkpoint
    result = _run(*_base(model, domains_db), "--domain", REVIEWS_SQL, "--name", "x")
    assert result.exit_code == 2 and "--name and --label-names describe" in result.output


@pytest.mark.slow
def test_twitter_against_amazon_reviews(tiny_checkpoint, tmp_path):
    """The README's cross-domain example on the real files, with the tiny model."""
    valid = require_shared(TWITTER / "valid.csv")
    reviews = require_shared(AMAZON / "ground_truth.tsv")
    sql = (
        "reviews=SELECT column2 AS text, CASE WHEN column1 > 0.5 THEN 'bullish' "
        "WHEN column1 < -0.5 THEN 'bearish' ELSE 'neutral' END AS label "
        f"FROM read_csv('{reviews}', delim='\t', header=false)"
    )
    args = ["--model", str(tiny_checkpoint), "--input", str(valid), "--max-length", "32"]
    args += ["--label-names", "bearish,bullish,neutral", "--domain", sql, "--device", "cpu"]
    report = tmp_path / "eval.json"
    result = _run(*args, "--out", str(report))
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())

    with valid.open(newline="") as fh:
        tweets = [TINY_LABELS[int(row["label"])] for row in csv.DictReader(fh)]
    with reviews.open(newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)  # texts hold stray quotes
        ratings = [float(row[1]) for row in rows]
    stars = ["bullish" if r > 0.5 else "bearish" if r < -0.5 else "neutral" for r in ratings]
    assert [d["name"] for d in saved["domains"]] == ["valid", "reviews"]
    for domain, row, truth in zip(saved["domains"], saved["summary"], (tweets, stars), strict=True):
        assert domain["rows"]["used"] == len(truth)
        supports = {k: v["support"] for k, v in domain["metrics"]["per_class"].items()}
        assert supports == {k: truth.count(k) for k in TINY_LABELS}
        assert row["baseline_accuracy"] == pytest.approx(majority_baseline(truth)[0])


def checkpoint_with_labels(tiny_checkpoint, out, labels: list[str]):
    """The tiny checkpoint with its three classes named `labels`, as train names them."""
    shutil.copytree(tiny_checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = dict(enumerate(labels))
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (out / "config.json").write_text(json.dumps(config))
    return out


def write_csv(path, labels) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows((f"market post number {i}", y) for i, y in enumerate(labels))
    return str(path)


def supports_of(saved: dict) -> dict[str, int]:
    return {k: v["support"] for k, v in saved["metrics"]["per_class"].items()}


@pytest.mark.parametrize(
    ("model_labels", "table"),
    [
        (["1", "2", "3"], [1, 1, 2, 2, 2]),  # a table with the model's first two values only
        (["-1", "0", "1"], [-1, 0, 0, 1, 1, 1]),
        (["1", "2", "3"], [3, 3, 1]),
    ],
)
def test_integer_labels_match_a_model_named_by_its_integers_by_value(
    tiny_checkpoint, tmp_path, model_labels, table
):
    model = checkpoint_with_labels(tiny_checkpoint, tmp_path / "model", model_labels)
    data = write_csv(tmp_path / "valid.csv", table)
    result = _run("--model", str(model), "--input", data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)
    truth = [str(y) for y in table]
    assert supports_of(saved) == {label: truth.count(label) for label in model_labels}
    # digits stored as text are their values too
    text = tmp_path / "text.parquet"
    duckdb.sql(
        f"COPY (SELECT text, CAST(label AS VARCHAR) AS label FROM read_csv('{data}')) "
        f"TO '{text}' (FORMAT parquet)"
    )
    result = _run("--model", str(model), "--input", str(text), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert supports_of(json.loads(result.stdout)) == supports_of(saved)


def test_an_integer_the_model_does_not_know_is_an_error_naming_it(tiny_checkpoint, tmp_path):
    model = checkpoint_with_labels(tiny_checkpoint, tmp_path / "model", ["1", "2", "3"])
    data = write_csv(tmp_path / "valid.csv", [0, 1, 2])  # 0 is no class of this model
    result = _run("--model", str(model), "--input", data, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: label '0' in column 'label' is not one of the model's labels (1, 2, 3); "
        "map it with --label-map 0=LABEL, or leave those rows out of the source"
    ]
    # --label-map onto the model's names, and --label-names by position, still work
    result = _run("--model", str(model), "--input", data, "--label-map", "0=3", "--json")
    assert result.exit_code == 0, result.output
    assert supports_of(json.loads(result.stdout)) == {"1": 1, "2": 1, "3": 1}
    result = _run("--model", str(model), "--input", data, "--label-names", "1,2,3", "--json")
    assert result.exit_code == 0, result.output
    assert supports_of(json.loads(result.stdout)) == {"1": 1, "2": 1, "3": 1}


def test_nan_labels_in_parquet_are_skipped(trained_checkpoint, tmp_path):
    model, _ = trained_checkpoint
    data = tmp_path / "gaps.parquet"  # pandas writes an int column with a gap as DOUBLE + NaN
    duckdb.sql(
        "COPY (SELECT * FROM (VALUES ('a', 0.0), ('b', 2.0), ('c', 'nan'::DOUBLE), ('d', 1.0)) "
        f"t(text, label)) TO '{data}' (FORMAT parquet)"
    )
    result = _run("--model", str(model), "--input", str(data), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)
    assert saved["rows"]["used"] == 3 and saved["rows"]["skipped"]["null_label"] == 1
    assert supports_of(saved) == {"bearish": 1, "bullish": 1, "neutral": 1}
