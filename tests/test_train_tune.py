"""`marketpulse train --tune` on the tiny BERT: trials, the kept model, the untouched test rows."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import train_args

from marketpulse.checkpoint import load_checkpoint, read_test_split
from marketpulse.cli import main

pytest.importorskip("torch")
pytest.importorskip("optuna")

TRIAL_KEYS = {"number", "params", "best_macro_f1", "epochs_run", "seconds", "state"}


@pytest.fixture(scope="module")
def tuned(market_db, tiny_checkpoint, tmp_path_factory):
    """A 2-trial study; records the study tune made, what every fine_tune call saw and
    what the test scoring got."""
    import optuna

    from marketpulse.train import trainer, tune

    calls, scored, studies = [], [], []

    def spy_create_study(*args, **kwargs):
        studies.append(create_study(*args, **kwargs))
        return studies[-1]

    def spy_fine_tune(cfg, data, work, callbacks=()):
        fit = tune_fine_tune(cfg, data, work, callbacks)
        weights = {k: v.detach().clone() for k, v in fit.model.state_dict().items()}
        calls.append({"cfg": cfg, "data": data, "fit": fit, "weights": weights})
        return fit

    def spy_predict(model, tokenizer, texts, **kwargs):
        scored.append(list(texts))
        return predict(model, tokenizer, texts, **kwargs)

    tune_fine_tune, predict = tune.fine_tune, trainer.predict_logits
    create_study = optuna.create_study
    out = tmp_path_factory.mktemp("tuned") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune, "fine_tune", spy_fine_tune)
        mp.setattr(trainer, "predict_logits", spy_predict)
        mp.setattr(optuna, "create_study", spy_create_study)
        extra = ["--seed", "5", "--tune", "--tune-trials", "2", "--tune-max-epochs", "2"]
        args = train_args(market_db, out, tiny_checkpoint, *extra, small=False)
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return SimpleNamespace(out=out, result=result, calls=calls, scored=scored, studies=studies)


def test_tune_runs_every_trial_within_the_space(tuned):
    out, result, calls = tuned.out, tuned.result, tuned.calls
    m = json.loads((out / "metrics.json").read_text())
    tuning = m["tuning"]
    assert [t["number"] for t in tuning["trials"]] == [0, 1]
    assert len(calls) == 2  # one fine_tune per trial, no retraining
    for t, call in zip(tuning["trials"], calls, strict=True):
        assert set(t) == TRIAL_KEYS  # validation figures only; nothing from the test rows
        p = t["params"]
        assert 1e-5 <= p["learning_rate"] <= 3e-4
        assert p["epochs"] in (1, 2)
        assert p["batch_size"] in (16, 32, 64)
        assert 0.0 <= p["warmup_ratio"] <= 0.2
        assert t["state"] == "complete"  # the pruner waits for three completed trials
        assert 1 <= t["epochs_run"] <= p["epochs"]
        assert t["best_macro_f1"] == call["fit"].best_macro_f1
        assert call["cfg"].learning_rate == p["learning_rate"]
        assert call["cfg"].batch_size == p["batch_size"]
    # Seeded TPE: two trials draw different points.
    assert tuning["trials"][0]["params"] != tuning["trials"][1]["params"]
    assert tuning["budget"] == {
        "trials": 2,
        "minutes": 60.0,
        "trials_run": 2,
        "seconds": tuning["budget"]["seconds"],
        "stopped_by": "trials",
    }
    assert tuning["space"]["epochs"] == {"low": 1, "high": 2}
    assert tuning["sampler"]["seed"] == 5
    assert "tuning: 2 trials" in result.output and "kept trial" in result.output
    assert "test set: 9 rows" in result.output
    assert not (out / "_trainer").exists()


def test_final_checkpoint_is_the_best_trial_model(tuned, tiny_checkpoint):
    from transformers import AutoModelForSequenceClassification

    out, calls = tuned.out, tuned.calls
    m = json.loads((out / "metrics.json").read_text())
    trials = m["tuning"]["trials"]
    top = max(t["best_macro_f1"] for t in trials)
    best = next(t for t in trials if t["best_macro_f1"] == top)  # first of any tie
    assert m["tuning"]["best"]["number"] == best["number"]
    assert m["tuning"]["best"]["params"] == best["params"]

    hp = m["hyperparameters"]
    for name, value in best["params"].items():
        assert hp[name] == value, name
    assert hp["seed"] == 5 and hp["max_length"] == 16
    assert m["validation"]["best_macro_f1"] == best["best_macro_f1"]
    assert m["validation"]["epochs_run"] == best["epochs_run"]

    checkpoint = load_checkpoint(out)
    assert checkpoint.labels == ("bearish", "bullish", "neutral")
    assert checkpoint.max_length == 16 and checkpoint.base_model == str(tiny_checkpoint)
    saved = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    kept = calls[best["number"]]["weights"]
    assert all(saved[k].equal(kept[k]) for k in kept)  # the trial's own weights, not a retrain
    other = calls[1 - best["number"]]["weights"]
    assert not all(saved[k].equal(other[k]) for k in other)


def test_trials_never_see_the_test_rows(tuned):
    out, calls, scored = tuned.out, tuned.calls, tuned.scored
    test_texts, _ = read_test_split(load_checkpoint(out))
    assert len(test_texts) == 9
    for call in calls:
        data = call["data"]
        seen = set(data.train_texts) | set(data.val_texts)
        assert len(seen) == 81 and not seen & set(test_texts)
    # The test rows are scored once, after the study, by the kept model.
    assert scored == [test_texts]


def test_tune_minutes_ends_the_study_before_the_trial_limit(market_db, tiny_checkpoint, tmp_path):
    # Optuna's timeout is checked between trials: the first runs, no second one starts.
    out = tmp_path / "model"
    extra = ["--tune", "--tune-trials", "5", "--tune-minutes", "0.0001", "--tune-max-epochs", "1"]
    args = train_args(market_db, out, tiny_checkpoint, "--seed", "5", *extra, small=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    tuning = json.loads((out / "metrics.json").read_text())["tuning"]
    assert len(tuning["trials"]) == 1 and tuning["best"]["number"] == 0
    assert tuning["budget"]["trials_run"] == 1 and tuning["budget"]["stopped_by"] == "time"
    assert "stopped by time" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tune", "--learning-rate", "1e-4"], "--tune searches --learning-rate; drop it"),
        (["--tune", "--epochs", "3"], "bound epochs with --tune-max-epochs"),
        (["--tune-trials", "3"], "--tune-trials applies with --tune only"),
    ],
)
def test_tune_flag_clashes_are_usage_errors(extra, message, market_db, tiny_checkpoint, tmp_path):
    out = tmp_path / "model"
    args = train_args(market_db, out, tiny_checkpoint, *extra, small=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_missing_optuna_is_a_one_line_error(market_db, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    out = tmp_path / "model"
    args = train_args(market_db, out, tiny_checkpoint, "--tune", small=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "pip install 'marketpulse[train]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_tune_pruner_stops_a_trial_below_the_median_from_epoch_two(tuned):
    """The pruner of the study `tune.run` made (not one built here), driven through the
    Trainer callback: nothing is pruned before three completed trials or at epoch 1."""
    import optuna
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from marketpulse.train.tune import make_pruning_callback

    (made,) = tuned.studies
    assert made.direction == optuna.study.StudyDirection.MAXIMIZE
    recorded = json.loads((tuned.out / "metrics.json").read_text())["tuning"]["pruner"]
    assert recorded == {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2}
    # the same pruner on a fresh study, so the fixture's own trials do not count
    study = optuna.create_study(direction="maximize", pruner=made.pruner)
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)

    def complete():
        trial = study.ask()
        for epoch, f1 in enumerate([0.5, 0.7, 0.8], start=1):
            trial.report(f1, epoch)
        study.tell(trial, 0.8)

    def evaluate(epoch, f1):
        callback = make_pruning_callback(study.ask())
        state, control = TrainerState(epoch=float(epoch)), TrainerControl()
        callback.on_evaluate(args, state, control, metrics={"eval_macro_f1": f1})
        return callback.pruned_at, control.should_training_stop

    complete()
    complete()
    assert evaluate(2, 0.1) == (None, False)  # two completed trials are too few
    complete()
    assert evaluate(1, 0.1) == (None, False)  # never at epoch 1
    assert evaluate(2, 0.1) == (2.0, True)  # below the median at epoch 2: stop
    assert evaluate(2, 0.9) == (None, False)  # above it: go on
