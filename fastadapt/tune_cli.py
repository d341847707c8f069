"""The `fastadapt tune` command and `fastadapt train --from-study` (hyper-parameter search with
Optuna: fastadapt.tune)."""

from __future__ import annotations

from pathlib import Path

from .launch import rank


def from_study(args) -> dict:
    """`train --from-study`: the study's preset settings, with its --set items and the best trial's
    values put before the command's own --set items (so those apply on top); the run folder
    defaults to runs/<study>-best."""
    from .tune_storage import best_trial_settings

    raw, items, best = best_trial_settings(args.from_study, getattr(args, "study_storage", None))
    args.given_overrides = list(args.overrides)  # what `--nproc` passes on (its ranks read the study again)
    args.overrides = items + list(args.overrides)
    if args.out is None:
        args.out = Path("runs") / f"{best['study']}-best"
    chosen = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    if rank() == 0:
        print(f"from study {best['study']}: best trial {best['trial']} (validation {best['value']:.6g}): {chosen}")
    return raw


def add_tune_parser(sub) -> None:
    tune = sub.add_parser(
        "tune",
        help="hyper-parameter search (Optuna) over any config key; trials are run folders",
        description="Search the settings named in --space (YAML: params with low/high/log/step or choices, "
        "and trial_settings every trial gets, e.g. a shorter schedule), maximising or minimising the "
        "validation metric on the fixed validation episodes. Several processes, here or on other "
        "machines, share a study through --storage postgresql://... Then `fastadapt train "
        "--from-study STUDY_DIR` trains the full run from the best trial.",
    )
    tune.add_argument("config", metavar="PRESET_OR_YAML", help="the preset (or YAML file) whose settings are searched")
    tune.add_argument("--space", required=True, type=Path, metavar="SPACE_YAML", help="the search space file")
    tune.add_argument(
        "--trials", required=True, type=int, metavar="N", help="the study's target of finished trials (all workers)"
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: SQLite STUDY_DIR/study.db by default; postgresql://user@host/db for many workers",
    )
    tune.add_argument("--study", metavar="NAME", help="study name (default: <preset name>-tune)")
    tune.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes on this machine")
    tune.add_argument(
        "--pruner",
        default="median",
        choices=["median", "hyperband", "none"],
        help="stop unpromising trials at a validation (Optuna's MedianPruner or HyperbandPruner; default median)",
    )
    tune.add_argument(
        "--heartbeat", type=int, default=10, metavar="SECONDS", help="a trial silent for 2x this is failed and retried"
    )
    tune.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of every trial and of the full run from the best trial (repeatable)",
    )
    tune.add_argument("--out", type=Path, help="study folder (default: runs/<study name>)")
    tune.add_argument("--data-root", type=Path, help="data folder (default: $FASTADAPT_DATA, then the user cache)")
    tune.add_argument("--quiet", action="store_true", help="no per-trial log lines")


def run_tune(args) -> int:
    from .tune import prepare, run

    job = prepare(
        args.config,
        args.space,
        args.trials,
        overrides=args.overrides,
        storage=args.storage,
        study=args.study,
        out=args.out,
        workers=args.workers,
        pruner=args.pruner,
        heartbeat=args.heartbeat,
        data_root=args.data_root,
        quiet=args.quiet,
    )
    run(job, args.workers)
    print(f"study {job.study}: report in {Path(job.study_dir) / 'results.md'}")
    return 0
