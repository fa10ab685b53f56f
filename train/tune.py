"""`marketpulse train --tune`: a bounded Optuna search over the fine-tuning hyperparameters.

One trial is one `fit.fine_tune` call, on the train and validation rows only
(`FitData` does not hold the test rows). The study maximises the trial's best
validation macro-F1 over learning rate, epochs, batch size and warmup ratio
(`TuneConfig`), with a TPE sampler seeded by `--seed`, and stops at `--tune-trials`
trials or `--tune-minutes`, whichever comes first. A median pruner stops a trial
whose validation macro-F1 so far falls below the median of the completed trials at
the same epoch (never at epoch 1, never before three trials have completed).

The final checkpoint is the best completed trial's model, kept in memory: it is not
retrained. Its test rows are scored once, by that model, when the study is over.
metrics.json is what a plain run writes, with that trial's hyperparameters and
validation record, plus a `tuning` block listing every trial. As in a plain run, it
is all built beside --out and replaces it only when complete (`out_dir.staged_out`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from marketpulse.checkpoint import Checkpoint, load_checkpoint
from marketpulse.errors import MarketpulseError
from marketpulse.train.config import TrainConfig, TuneConfig
from marketpulse.train.fit import fine_tune
from marketpulse.train.hf_trainer import WORK_DIR, log
from marketpulse.train.out_dir import staged_out
from marketpulse.train.trainer import Prepared, prepare, save_and_score, write_test_rows

PRUNER = {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2}  # steps are epochs


def _import_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise MarketpulseError(
            "--tune needs optuna; install it with pip install 'marketpulse[train]'"
        ) from exc
    return optuna


def make_pruning_callback(trial):
    """A TrainerCallback that reports each epoch's validation macro-F1 to `trial`.

    When the study's pruner says so it stops the Trainer (which still loads the best
    epoch) and records the epoch in `pruned_at`; the objective then ends the trial.
    """
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        def __init__(self):
            self.pruned_at: float | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            trial.report(metrics["eval_macro_f1"], round(state.epoch))
            if trial.should_prune():
                self.pruned_at = state.epoch
                control.should_training_stop = True

    return ReportToTrial()


def _suggest(trial, tune: TuneConfig) -> dict:
    return {
        "learning_rate": trial.suggest_float("learning_rate", *tune.learning_rate, log=True),
        "epochs": trial.suggest_int("epochs", *tune.epochs),
        "batch_size": trial.suggest_categorical("batch_size", list(tune.batch_sizes)),
        "warmup_ratio": trial.suggest_float("warmup_ratio", *tune.warmup_ratio),
    }


def _describe(params: dict) -> str:
    return (
        f"learning rate {params['learning_rate']:.2e}, epochs {params['epochs']}, "
        f"batch {params['batch_size']}, warmup {params['warmup_ratio']:.3f}"
    )


def run(cfg: TrainConfig, tune: TuneConfig) -> Checkpoint:
    """Search per `tune`, save the best trial's model and metrics.json in `cfg.out`."""
    optuna = _import_optuna()
    t0 = time.perf_counter()
    prepared = prepare(cfg)
    with staged_out(Path(cfg.out)) as stage:
        write_test_rows(stage, prepared)
        _search(cfg, tune, optuna, prepared, stage, t0)
    return load_checkpoint(cfg.out)


def _search(
    cfg: TrainConfig, tune: TuneConfig, optuna, prepared: Prepared, stage: Path, t0: float
) -> None:
    """Run the study, then save the best trial's model and metrics.json in `stage`."""
    work = stage / WORK_DIR
    trials: list[dict] = []
    best: dict = {}  # the best completed trial so far: number, cfg, fit

    def objective(trial) -> float:
        params = _suggest(trial, tune)
        trial_cfg = dataclasses.replace(cfg, **{**params, "epochs": float(params["epochs"])})
        log(f"trial {trial.number + 1}/{tune.trials}: {_describe(params)}")
        reporter = make_pruning_callback(trial)
        started = time.perf_counter()
        fit = fine_tune(trial_cfg, prepared.fit, work, callbacks=(reporter,))
        state = "complete" if reporter.pruned_at is None else "pruned"
        trials.append(
            {
                "number": trial.number,
                "params": params,
                "best_macro_f1": fit.best_macro_f1,
                "epochs_run": fit.epochs_run,
                "seconds": round(time.perf_counter() - started, 1),
                "state": state,
            }
        )
        if state == "complete" and (not best or fit.best_macro_f1 > best["fit"].best_macro_f1):
            best.update(number=trial.number, cfg=trial_cfg, fit=fit)
        log(
            f"trial {trial.number + 1}/{tune.trials} {state}: best validation macro-F1 "
            f"{fit.best_macro_f1:.4f} in {fit.epochs_run:g} epochs, {trials[-1]['seconds']:.0f}s; "
            f"best so far trial {best['number'] + 1} ({best['fit'].best_macro_f1:.4f})"
        )
        if state == "pruned":
            raise optuna.TrialPruned()
        return fit.best_macro_f1

    startup = min(10, max(1, tune.trials // 2))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER["n_startup_trials"], n_warmup_steps=PRUNER["n_warmup_steps"]
        ),
    )
    t_tune = time.perf_counter()
    try:
        study.optimize(
            objective, n_trials=tune.trials, timeout=tune.minutes * 60, gc_after_trial=True
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    tune_seconds = time.perf_counter() - t_tune

    chosen = next(t for t in trials if t["number"] == best["number"])
    tuning = {
        "objective": "best validation macro-F1 of a trial (test rows never seen)",
        "final_model": "the best trial's model, not retrained",
        "space": tune.space(),
        "sampler": {"name": "TPE", "seed": cfg.seed, "n_startup_trials": startup},
        "pruner": PRUNER,
        "budget": {
            "trials": tune.trials,
            "minutes": tune.minutes,
            "trials_run": len(trials),
            "seconds": round(tune_seconds, 1),
            "stopped_by": "trials" if len(trials) >= tune.trials else "time",
        },
        "best": {
            "number": chosen["number"],
            "params": chosen["params"],
            "best_macro_f1": chosen["best_macro_f1"],
            "best_epoch": best["fit"].best_epoch,
        },
        "trials": trials,
    }
    log(
        f"tuning done: {len(trials)} trials in {tune_seconds:.0f}s; keeping trial "
        f"{chosen['number'] + 1} ({_describe(chosen['params'])})"
    )
    save_and_score(best["cfg"], prepared, best["fit"], t0, stage, extra={"tuning": tuning})


def format_tuning(tuning: dict) -> list[str]:
    """The printed report's trials table (one row per trial, the kept one marked)."""
    budget, best = tuning["budget"], tuning["best"]
    lines = [
        f"tuning: {budget['trials_run']} trials in {budget['seconds']:.0f}s "
        f"(budget {budget['trials']} trials or {budget['minutes']:g} min, stopped by "
        f"{budget['stopped_by']}); kept trial {best['number'] + 1}, not retrained:",
        "   trial  state     val macro-F1  epochs  learning rate  batch  warmup  seconds",
    ]
    for t in tuning["trials"]:
        p = t["params"]
        mark = "*" if t["number"] == best["number"] else " "
        lines.append(
            f"  {mark}{t['number'] + 1:>5}  {t['state']:<8}  {t['best_macro_f1']:>12.4f}"
            f"  {t['epochs_run']:>3g}/{p['epochs']:<2}  {p['learning_rate']:>13.2e}"
            f"  {p['batch_size']:>5}  {p['warmup_ratio']:>6.3f}  {t['seconds']:>7.0f}"
        )
    return lines
