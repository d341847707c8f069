"""`fastadapt` command line: train, eval, lake, presets, results.

User errors (bad settings, missing data, impossible episodes) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import FastAdaptError
from .launch import Terminated, launch, raise_terminated, rank
from .results import print_result
from .tune_cli import add_tune_parser, from_study, run_tune

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (and exit 2) like every other user error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastadapt", description="Meta-learning: train, evaluate and compare few-shot learners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="meta-train a preset or YAML config (resumes an interrupted run)",
        description="Meta-train, then evaluate on the fixed test episodes. Running it again "
        "on the same run folder resumes exactly where it stopped.",
    )
    train.add_argument(
        "config",
        metavar="PRESET_OR_YAML_OR_RUN_DIR",
        nargs="?",
        help="a preset name (see `fastadapt presets`), a YAML file, or a run folder to resume",
    )
    train.add_argument(
        "--from-study",
        type=Path,
        metavar="STUDY_DIR",
        help="a full run (the preset's schedule) with the best trial's values of a `fastadapt tune` study "
        "(its folder); --set items apply on top",
    )
    train.add_argument(
        "--study-storage",
        metavar="URL",
        help="with --from-study: read the study from this Optuna storage instead of the one it was created "
        "with (e.g. sqlite:///STUDY_DIR/study-copy.db once a throwaway PostgreSQL server is gone)",
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.steps=500 (repeatable)",
    )
    train.add_argument("--out", type=Path, help="run folder (default: runs/<preset name>)")
    train.add_argument("--data-root", type=Path, help="data folder (default: $FASTADAPT_DATA, then the user cache)")
    train.add_argument("--download", action="store_true", help="fetch missing datasets from their official URLs")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (torch.distributed via torchrun, each running "
        "its share of every meta-batch; see the README section 'Several processes or machines')",
    )

    ev = sub.add_parser("eval", help="evaluate a trained run on fixed test episodes (mean ± 95%% CI)")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by `fastadapt train`")
    ev.add_argument("--episodes", type=int, help="number of test episodes (default: the run's eval.episodes)")
    ev.add_argument("--ways", type=int, help="classes per test episode (default: the run's eval.ways)")
    ev.add_argument("--shots", type=int, help="support examples per class (default: the run's eval.shots)")
    ev.add_argument("--queries", type=int, help="query examples per class (default: the run's eval.queries)")
    ev.add_argument("--seed", type=int, help="seed of the fixed test episodes (default: the run's eval.seed)")
    ev.add_argument("--adapt-steps", type=int, help="test-time gradient steps (MAML family, fine-tuning baselines)")
    ev.add_argument(
        "--data",
        metavar="DATASET",
        help="evaluate on another dataset (cross-domain), e.g. --data imagefolder --set data.args.root=DIR",
    )
    ev.add_argument(
        "--set",
        dest="data_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data.* setting of the evaluation dataset, or a test-time learner.args.* setting such as "
        "maml-rl's eval_later_lr_factor (repeatable; recorded in the eval JSON)",
    )
    ev.add_argument("--split", help="split to test on (default: the run's test split; `all` or `test` with --data)")
    ev.add_argument("--data-root", type=Path, help="data folder (default: $FASTADAPT_DATA, then the user cache)")

    pr = sub.add_parser(
        "predict",
        help="adapt a trained run to your labelled support set and label new inputs",
        description="Adapt the run's model to SUPPORT exactly as evaluation does, then label every "
        "QUERY: one CSV row per query with the predicted label and each class's probability.",
    )
    pr.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a classification run folder (`fastadapt train`)")
    pr.add_argument(
        "--support",
        required=True,
        metavar="SUPPORT",
        help="folder with one sub-folder of images per class, or a CSV of path,label "
        "(text runs: a CSV, TSV or JSONL of text,label)",
    )
    pr.add_argument(
        "--query",
        required=True,
        metavar="QUERY",
        help="folder of images, a glob pattern (quote it), or a CSV whose first column is path "
        "(text runs: a CSV, TSV or JSONL with a text column, or a .txt file of one sentence per line)",
    )
    pr.add_argument("--out", type=Path, help="write the predictions CSV here (default: print it)")
    pr.add_argument("--adapt-steps", type=int, help="test-time gradient steps (MAML family, fine-tuning baselines)")
    pr.add_argument("--data-root", type=Path, help="data folder (default: $FASTADAPT_DATA, then the user cache)")

    lake = sub.add_parser("lake", help="score a run on Lake et al.'s 20-run one-shot benchmark (all_runs.zip)")
    lake.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="an Omniglot run folder (scored 20-way 1-shot)")
    lake.add_argument("--data-root", type=Path, help="data folder (default: $FASTADAPT_DATA, then the user cache)")

    add_tune_parser(sub)

    sub.add_parser("presets", help="list the shipped presets")

    results = sub.add_parser("results", help="markdown results table from run folders (or folders of them)")
    results.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders, or folders of them (runs/)"
    )
    results.add_argument("--out", type=Path, help="also write the table to this file")
    results.add_argument("--plot", type=Path, help="also write a PNG comparing the methods' accuracies")
    return parser


def _train(args) -> int:
    from .checkpoint import latest_step
    from .config import apply_overrides, config_from_dict, load_raw
    from .results import read_result
    from .runlock import read_run_config

    if (args.config is None) == (args.from_study is None):
        raise FastAdaptError("give a preset, YAML file or run folder, or --from-study STUDY_DIR (one of them)")
    if args.from_study is not None:
        raw, run_dir = from_study(args), None
    elif (source := Path(args.config)).is_dir():
        if not (source / "config.yaml").is_file():
            raise FastAdaptError(
                f"{source} is a folder without config.yaml; give a preset name, a YAML file or a run folder"
            )
        if args.out and args.out.resolve() != source.resolve():
            raise FastAdaptError(f"resuming {source}: --out {args.out} names another folder; drop --out")
        run_dir, raw = source, read_run_config(source)  # binary or damaged: one line naming it
    else:
        raw = load_raw(args.config)
        run_dir = None
    config = config_from_dict(apply_overrides(raw, args.overrides))
    run_dir = run_dir or args.out or Path("runs") / config.name
    _check_run_folder(run_dir, "--out" if args.out else "the run folder")
    if (run_dir / "config.yaml").is_file():
        _check_same_settings(run_dir, config)
    if (run_dir / "eval.json").exists() and (run_dir / "checkpoints" / "latest.json").exists():
        done = latest_step(run_dir)  # None when unreadable: then train resumes and checks each file
        if done is not None and done >= config.train.steps:
            if rank() == 0:  # under torchrun, every rank finds it complete; one prints it
                print(f"{run_dir} is complete ({done} steps); its result:")
                print_result(read_result(run_dir / "eval.json", run_dir))  # damaged: one line naming it
            return 0
    if args.nproc is not None:
        from .config_checks import check_ranks

        check_ranks(config, args.nproc)  # one line before torchrun starts any rank
        return launch(args, config.train.meta_batch)
    from .trainer import Trainer  # here: `--nproc` starts ranks without importing what they import

    trainer = Trainer(config, run_dir, data_root=args.data_root, quiet=args.quiet, download=args.download)
    result = trainer.fit()
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print_result(result)
    print(f"run folder: {run_dir}")
    return 0


def _check_run_folder(run_dir: Path, what: str) -> None:
    """A run folder must be a folder we can write in, or creatable: one line before any training."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FastAdaptError(f"{what} {run_dir} is a file, not a folder; choose a new run folder")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FastAdaptError(f"{what} {run_dir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FastAdaptError(f"{what} {run_dir} is not writable ({existing} is read-only); choose another folder")


def _check_same_settings(run_dir: Path, config) -> None:
    """Training again in a run folder continues that run: other settings are an error, not the old result."""
    from .config import config_from_dict
    from .runlock import read_run_config

    try:
        existing = config_from_dict(read_run_config(run_dir)).to_dict()
    except FastAdaptError as exc:
        raise FastAdaptError(f"{run_dir / 'config.yaml'}: {exc}") from None
    wanted = config.to_dict()
    if existing != wanted:
        changed = sorted(k for k in wanted if wanted[k] != existing.get(k))
        raise FastAdaptError(
            f"run folder {run_dir} holds a run with other settings (differs in: "
            f"{', '.join(changed)}); resume it with the same settings or choose a new --out"
        )


def _check_options(args, names: tuple[str, ...]) -> None:
    """Command-line numbers in range, before anything is loaded."""
    limits = {
        "episodes": (2, "an integer >= 2 (a 95% CI needs two)"),
        "ways": (2, "an integer >= 2"),
        "shots": (1, "an integer >= 1"),
        "queries": (1, "an integer >= 1"),
        "seed": (0, "an integer in 0..4294967294"),
        "adapt_steps": (1, "an integer >= 1"),
    }
    for name in names:
        value = getattr(args, name, None)
        low, allowed = limits[name]
        if value is not None and (value < low or (name == "seed" and value > 2**32 - 2)):
            raise FastAdaptError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")


def _eval(args) -> int:
    from .trainer import evaluate_run

    _check_options(args, ("episodes", "ways", "shots", "queries", "seed", "adapt_steps"))
    result = evaluate_run(
        args.run_dir,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        data_root=args.data_root,
        adapt_steps=args.adapt_steps,
        data=args.data,
        data_settings=[s for s in args.data_settings if not s.startswith("learner.")],
        learner_settings=[s for s in args.data_settings if s.startswith("learner.")],
        split=args.split,
    )
    print_result(result)
    return 0


def _predict(args) -> int:
    from .predict import run_predict

    _check_options(args, ("adapt_steps",))
    summary = run_predict(args.run_dir, args.support, args.query, args.out, args.adapt_steps, args.data_root)
    if args.out is None:
        print(summary["text"], end="")
    classes = ", ".join(map(str, summary["classes"]))
    scored = f"; accuracy against the query labels {100 * summary['accuracy']:.2f}%" if "accuracy" in summary else ""
    where = f" -> {args.out}" if args.out else ""
    n = summary["queries"]
    print(
        f"adapted to {summary['support']} support examples of {len(summary['classes'])} classes ({classes}); "
        f"labelled {n} quer{'y' if n == 1 else 'ies'}{where}{scored}",
        file=sys.stderr,
    )
    return 0


def _lake(args) -> int:
    from .lake import lake_benchmark

    result = lake_benchmark(args.run_dir, data_root=args.data_root)
    print(
        f"Lake 20-run one-shot benchmark: accuracy {100 * result['accuracy']:.2f}% "
        f"(mean error {result['mean_error']:.2f}% over 20 runs, {result['trials']} trials)"
    )
    if not result["clean"]:
        print(
            f"warning: this run trained on split {result['train_split']!r}, which contains characters of "
            f"the evaluation alphabets the benchmark uses; train on 'background' for a clean score",
            file=sys.stderr,
        )
    return 0


def _presets(args) -> int:
    from .config import load_config, preset_names

    for name in preset_names():
        config = load_config(name)
        t = config.train
        episodes = f"{t.episodes.ways}-way " if t.episodes.ways else ""
        print(
            f"{name:28s} {config.learner.name:8s} {config.data.dataset:9s} train {episodes}{t.episodes.shots}-shot, "
            f"{t.steps} steps x {t.meta_batch} | {config.description}"
        )
    return 0


def _results(args) -> int:
    from .results import results_table
    from .utils import atomic_write_text

    table = results_table(args.run_dirs)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    if args.plot:
        from .results import results_plot

        results_plot(args.run_dirs, args.plot)
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (a skipped image, a damaged checkpoint fallen back from) as one stderr line,
    without Python's source location."""
    return f"fastadapt: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    args = _parser().parse_args(argv)
    handler = {
        "train": _train,
        "eval": _eval,
        "predict": _predict,
        "lake": _lake,
        "presets": _presets,
        "results": _results,
        "tune": run_tune,
    }[args.command]
    # SIGTERM (kill, a batch scheduler's time limit) stops like Ctrl-C: one line, files intact.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main else None
    try:
        with _run_folder_lock(args):
            return handler(args)
    except FastAdaptError as exc:
        if not getattr(exc, "shown_by_rank_0", False):  # an error every torchrun rank raised: rank 0 prints it
            where = f" (rank {rank()})" if rank() else ""
            print(f"fastadapt {args.command}{where}: error: {exc}", file=sys.stderr)
        if getattr(exc, "agreed", False):
            from .distributed import settle

            settle(exc)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if rank() == 0:
            print(f"{how}; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_folder_lock(args):
    """`eval` and `lake` write into a run folder: hold its lock (train's is taken by fit)."""
    if args.command in ("eval", "lake") and (args.run_dir / "config.yaml").is_file():
        from .runlock import run_lock

        return run_lock(args.run_dir)
    return contextlib.nullcontext()


if __name__ == "__main__":
    sys.exit(main())
