"""`fastadapt tune`: hyper-parameter search with Optuna over any config key.

The objective is the trainer's selection score: the primary metric on the run's fixed validation
episodes (`eval.seed + 1`), in the metric's declared direction (`fastadapt.evaluate.METRICS`),
at the best validation of the run (the checkpoint a run keeps). Trials never touch the test
episodes; they are used once, by the full run that `fastadapt train --from-study` starts from the
best trial. Each trial is an ordinary run folder, `STUDY/trials/NNNN`.

- Pruning: every validation score is reported to the trial by the trainer's `on_validation`
  callback; Optuna's median pruner (a trial worse than the median of earlier trials at the same
  step, from the first validation on, once 5 trials have finished) or Hyperband (resources:
  meta-training steps, from `train.val_every` to `train.steps`) stops poor trials.
  A run that diverges (non-finite loss) is pruned too, with the reason kept as `diverged`.
- Storage: SQLite in the study folder by default; `--storage postgresql://...` (psycopg 3) lets
  several `fastadapt tune` processes, on one machine or many, share one study. `--trials N` is
  the study's target of finished (complete or pruned) trials, shared by every worker.
- Killed workers: a heartbeat (`--heartbeat` seconds) marks each running trial alive; a trial
  whose worker died (kill -9, lost machine) is marked failed by the next trial start of any
  worker (or the next `fastadapt tune` on the study) and retried with the same parameters,
  resuming the dead trial's run folder from its last checkpoint where that folder is reachable
  (Optuna's RetryHeartbeatStaleTrialCallback; the trainer's exact resume). Ctrl-C / SIGTERM fail the
  running trial and queue it the same way.
- The first trial of a new study is the preset's own values of the searched keys (when they lie
  in the space), so the report shows what the search gained over the default.

Source: Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization Framework", KDD 2019;
Li et al., "Hyperband", JMLR 2018. The report (table, plots) is in fastadapt.tune_report.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import apply_overrides, config_from_dict, load_raw
from .errors import FastAdaptError
from .tune_space import Space, check_space, load_space, parse_space, preset_values
from .tune_storage import MAX_RETRY, STUDY_FILE, open_storage, shown_url, storage_url
from .utils import atomic_write_text

ATTR = "fastadapt"  # the study's user attribute holding what its trials are built from
PRUNERS = ("median", "hyperband", "none")


@dataclass
class Job:
    """Everything a tuning worker needs (plain data: it crosses to spawned worker processes)."""

    study: str
    storage: str  # the SQLAlchemy URL
    study_dir: str
    config: dict  # the preset's settings as loaded (raw, before overrides)
    overrides: list[str]  # --set items: every trial and the full run from the best trial
    space_text: str
    space_where: str
    trials: int
    pruner: str = "median"
    heartbeat: int = 10
    data_root: str | None = None
    threads: int | None = None  # intra-op threads per worker (None: torch's default)
    quiet: bool = False
    sampler_seed: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def space(self) -> Space:
        return parse_space(yaml.safe_load(self.space_text), self.space_text, self.space_where)


def _metric(config, data_root) -> str:
    """The primary metric of the config's learner, with the data checked before any trial."""
    from .trainer import Trainer

    return Trainer(config, Path(os.devnull), data_root=data_root, quiet=True).learner.primary_metric


def _threads(workers: int) -> int | None:
    """Intra-op threads per worker: the cores shared out (never more than OMP_NUM_THREADS asks);
    None for one worker, which keeps torch's own choice (OMP_NUM_THREADS, else the cores)."""
    if workers == 1:
        return None
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(asked)) if asked.isdigit() and int(asked) > 0 else share


def prepare(
    preset: str,
    space_path: str,
    trials: int,
    *,
    overrides: list[str] | None = None,
    storage: str | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    workers: int = 1,
    pruner: str = "median",
    heartbeat: int = 10,
    data_root=None,
    quiet: bool = False,
) -> Job:
    """Check everything (space against the config, data, storage) and create or join the study.
    Every problem is one FastAdaptError line, before any trial runs."""
    from .evaluate import higher_is_better

    if trials < 0 or workers < 1 or heartbeat < 1:
        raise FastAdaptError(
            f"--trials must be >= 0, --workers >= 1 and --heartbeat >= 1; got {trials}, {workers}, {heartbeat}"
        )
    if pruner not in PRUNERS:
        raise FastAdaptError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    overrides = list(overrides or [])
    raw = load_raw(preset)
    space = load_space(space_path)
    check_space(space, raw, overrides, str(space_path))
    base = config_from_dict(apply_overrides(raw, overrides + list(space.trial_settings)))
    if not base.data.val_split:
        from .registry import DATASETS

        dataset = DATASETS.get(base.data.dataset)
        splits = [s for s in getattr(dataset, "splits", ()) if s not in getattr(dataset, "test_only", {})]
        fix = (
            f"set one (--set data.val_split=...; {base.data.dataset}'s splits for it: {', '.join(splits)})"
            if len(splits) > 1
            else f"{base.data.dataset} has no validation split (only {', '.join(splits)} and its test tasks), so "
            f"it cannot be tuned"
        )
        raise FastAdaptError(f"tuning needs validation episodes (the objective), but data.val_split is null; {fix}")
    metric = _metric(base, data_root)
    study = study or f"{base.name}-tune"
    study_dir = Path(out) if out is not None else Path("runs") / study
    if study_dir.exists() and not study_dir.is_dir():
        raise FastAdaptError(f"--out {study_dir} is a file; choose a folder for the study")
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, study_dir)
    info = {
        "config": raw,
        "overrides": overrides,
        "space": yaml.safe_load(space.text),
        "metric": metric,
        "direction": "maximize" if higher_is_better(metric) else "minimize",
    }
    job = Job(
        study=study,
        storage=url,
        study_dir=str(study_dir.resolve()),
        config=raw,
        overrides=overrides,
        space_text=space.text,
        space_where=str(space_path),
        trials=trials,
        pruner=pruner,
        heartbeat=heartbeat,
        data_root=None if data_root is None else str(data_root),
        threads=_threads(workers),
        quiet=quiet,
        info=info,
    )
    _create_or_join(job, space, raw, overrides)
    record = {
        "study": study,
        "storage": None if storage is None else shown_url(url),
        "preset": preset,
        "space_file": str(space_path),
        **info,
    }
    atomic_write_text(study_dir / STUDY_FILE, json.dumps(record, indent=2, default=str))
    return job


def _create_or_join(job: Job, space: Space, raw: dict, overrides: list[str]) -> None:
    """Create the study (and queue the preset's default as its first trial), or join it when its
    recorded settings are these; another study under the same name is a one-line error."""
    import optuna

    storage = open_storage(job.storage, job.heartbeat)
    try:
        study = optuna.create_study(study_name=job.study, storage=storage, direction=job.info["direction"])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=job.study, storage=storage)
        for _ in range(100):  # its creator, starting at the same moment, may not have recorded them yet
            recorded = study.user_attrs.get(ATTR)
            if recorded is not None:
                break
            time.sleep(0.1)
        mine = json.loads(json.dumps(job.info, default=str))
        if recorded != mine:
            changed = sorted(k for k in mine if (recorded or {}).get(k) != mine[k])
            raise FastAdaptError(
                f"study {job.study!r} in {shown_url(job.storage)} was created with other settings "
                f"(differs in: {', '.join(changed) or 'all'}); give the same preset, --set and --space, "
                f"or a new --study name"
            ) from None
        return
    study.set_user_attr(ATTR, json.loads(json.dumps(job.info, default=str)))
    default = preset_values(space, raw, overrides)
    if default is not None:
        study.enqueue_trial(default, user_attrs={"preset_default": True})


def _pruner(name: str, config):
    import optuna

    if name == "median":  # from a trial's first validation on, once 5 trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.train.val_every, max_resource=config.train.steps, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def _objective(job: Job, space: Space, done: list):
    import optuna

    from .divergence import DivergedError
    from .trainer import Trainer

    def objective(trial) -> float:
        done.append(trial)
        values = {p.key: p.suggest(trial) for p in space.params}
        # a retried trial inherits its dead predecessor's user attributes, so its run folder
        relative = trial.user_attrs.get("run_dir") or f"trials/{trial.number:04d}"
        trial.set_user_attr("run_dir", relative)
        items = [*job.overrides, *space.trial_settings, *space.overrides(values)]
        config = config_from_dict(apply_overrides(job.config, items))
        trainer = Trainer(config, Path(job.study_dir) / relative, data_root=job.data_root, quiet=True)

        def on_validation(step: int, score: float) -> None:
            if math.isfinite(score):
                trial.report(score, step)  # a step already reported (by a resumed trial) is ignored
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {job.info['metric']} {score:.4g} at step {step}")

        try:
            trainer.fit(on_validation=on_validation, test=False)
        except DivergedError as exc:
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        best = trainer.state["best"]
        if best is None or not math.isfinite(best):
            raise optuna.TrialPruned("no finite validation score")
        trial.set_user_attr("best_step", trainer.state["best_step"])
        trial.set_user_attr("train_seconds", round(trainer.state["elapsed"], 2))
        return best

    return objective


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_worker(job: Job, index: int = 0) -> None:
    """One worker: trials until the study has `job.trials` finished ones (every worker counts
    the study's trials, so workers anywhere stop together)."""
    import optuna
    import torch
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING if job.quiet else optuna.logging.INFO)
    space = job.space
    base = config_from_dict(apply_overrides(job.config, [*job.overrides, *space.trial_settings]))
    storage = open_storage(job.storage, job.heartbeat)
    sampler = optuna.samplers.TPESampler(constant_liar=True, seed=job.sampler_seed)
    study = optuna.load_study(study_name=job.study, storage=storage, sampler=sampler, pruner=_pruner(job.pruner, base))
    if finished(study) >= job.trials:
        return
    done: list = []
    stop = MaxTrialsCallback(job.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    try:
        study.optimize(_objective(job, space, done), callbacks=[stop])
    except KeyboardInterrupt:
        # Optuna has marked the running trial failed: queue it again, so that the next
        # `fastadapt tune` on the study resumes its run folder instead of losing it.
        if done:
            frozen = study._storage.get_trial(done[-1]._trial_id)
            if frozen.state == TrialState.FAIL:
                RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)(study, frozen)
        raise


def _spawned(job: Job, index: int) -> None:
    """A worker process: exits with FastAdaptError's code 2 after printing its one line."""
    import signal
    import sys

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)  # unwind like Ctrl-C: the running trial is queued again
    try:
        run_worker(job, index)
    except FastAdaptError as exc:
        print(f"fastadapt tune: worker {index}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run(job: Job, workers: int = 1) -> None:
    """Run `workers` workers (this process alone for 1; spawned processes otherwise), then write
    the report into the study folder."""
    if workers == 1:
        run_worker(job)
    else:
        context = multiprocessing.get_context("spawn")  # no torch state forked into workers
        processes = [context.Process(target=_spawned, args=(job, i), daemon=False) for i in range(workers)]
        try:
            for process in processes:
                process.start()
            for process in processes:
                process.join()
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                    process.join()
    from .tune_report import write_report

    write_report(job)  # also after a worker's death: its trial shows (failed, queued again)
    if workers > 1:
        codes = [p.exitcode for p in processes]
        if 130 in codes or -signal.SIGTERM in codes:
            raise KeyboardInterrupt
        failed = [c for c in codes if c != 0]
        if failed:
            raise FastAdaptError(
                f"{len(failed)} of {workers} tune workers stopped (exit codes {failed}; errors above); "
                f"the study is intact: run the same command again to continue it"
            )
