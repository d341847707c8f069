"""Results table (markdown) generated from run folders, so reported numbers come from runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import FastAdaptError

PERCENT_METRICS = ("accuracy", "success_rate", "f1")  # shown in %

_NUMBER = (int, float)
#: Keys every result file must hold (the metric's own value is checked besides).
_EVAL_KEYS = ("preset", "method", "dataset", "shots", "episodes", "seed", "ci95", "train_steps")
_LAKE_KEYS = ("preset", "method", "accuracy")


def _problem(record, lake: bool) -> str | None:
    """What is wrong with a parsed result record, or None."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    missing = [k for k in (_LAKE_KEYS if lake else _EVAL_KEYS) if k not in record]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for key in ("preset", "method") + (() if lake else ("dataset",)):
        if not isinstance(record[key], str):
            return f"its {key} is {record[key]!r}, not a string"
    metric = "accuracy" if lake else record.get("metric") or ("accuracy" if "accuracy" in record else "mse")
    for key in (metric,) + (() if lake else ("ci95",)):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            return f"its {key} is {value!r}, not a number"
    for key, kind in (("reference", dict), ("overrides", list), ("machine", dict), ("learner", dict)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            return f"its {key} is not a JSON {'object' if kind is dict else 'array'}"
    if isinstance(record.get("machine"), dict) and not {"cores", "device"} <= set(record["machine"]):
        return "its machine lacks cores or device"
    return None


def read_result(path: str | Path, run_dir: str | Path | None = None) -> dict:
    """A run's eval.json, eval-*.json or lake.json, checked: binary, truncated, not an object or
    missing keys is a one-line FastAdaptError naming the file and how to re-create it."""
    path = Path(path)
    run_dir = Path(run_dir) if run_dir is not None else path.parent
    lake = path.name == "lake.json"
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        problem = "it is not text (binary or overwritten)"
    except ValueError as exc:
        problem = f"it is not valid JSON (truncated or overwritten: {exc})"
    else:
        problem = _problem(record, lake)
    if problem is None:
        return record
    if lake:
        fix = f"re-create it with `fastadapt lake {run_dir}`, or delete it"
    elif path.name == "eval.json":
        fix = f"re-create it with `fastadapt eval {run_dir}`"
    else:
        fix = f"delete it, or re-create it with `fastadapt eval {run_dir}` and the options that wrote it"
    raise FastAdaptError(f"result file {path} is unusable: {problem}; {fix}")


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or any(folder.glob("eval*.json"))


def expand_run_dirs(run_dirs: list[Path]) -> list[Path]:
    """`run_dirs` with each folder of run folders (`runs/`, `results/`) replaced by its run
    folders in name order; run folders and anything else are kept as given."""
    out = []
    for folder in map(Path, run_dirs):
        inner = sorted(c for c in folder.iterdir() if c.is_dir() and _is_run(c)) if folder.is_dir() else []
        out += inner if inner and not _is_run(folder) else [folder]
    return out


def _records(run_dirs: list[Path]) -> list[dict]:
    records = []
    run_dirs = expand_run_dirs(run_dirs)
    for run_dir in run_dirs:
        files = sorted(Path(run_dir).glob("eval*.json"))
        if not files:  # a glob such as runs/* also names runs still training, or folders that are not runs
            what = (
                "does not exist"
                if not Path(run_dir).exists()
                else "has no eval.json yet"
                if (Path(run_dir) / "config.yaml").is_file()
                else "is not a run folder"
            )
            warnings.warn(f"{run_dir} {what}; left out of the table (train it, or `fastadapt eval` it, first)")
            continue
        for path in files:
            record = read_result(path, run_dir)
            record["run"] = str(run_dir)
            records.append(record)
        lake = Path(run_dir) / "lake.json"
        if lake.is_file():
            record = read_result(lake, run_dir)
            trained = {k: records[-1].get(k) for k in ("train_steps", "train_seconds", "overrides", "machine")}
            records.append({**trained, **record, "run": str(run_dir), "benchmark": "Lake 20-run (20-way 1-shot)"})
    if run_dirs and not records:
        raise FastAdaptError(
            f"none of the {len(run_dirs)} folders holds a result (eval.json); train or `fastadapt eval` them first"
        )
    return records


#: Published scores on Lake et al.'s 20-run benchmark (accuracy %), drawn on the Lake panel.
LAKE_ANCHORS = ((92.0, "Siamese (Koch)"), (95.5, "people"), (96.7, "BPL"))


def _benchmark(r: dict) -> str:
    if "benchmark" in r:
        return r["benchmark"]
    if r.get("ways"):
        trained = r.get("trained_on", r["dataset"])
        if trained != r["dataset"]:  # cross-domain: a run evaluated on another dataset (which folder, if one)
            root = (r.get("data_args") or {}).get("root")
            where = f"{Path(str(root)).name}, " if root else ""
            split = f" ({where}{r['split']}; trained on {trained})"
        else:
            unit = "alphabets" if r["dataset"] == "omniglot" else "classes"
            split = "" if r.get("split", "test") == "test" else f" ({r['split']} {unit})"
        return f"{r['dataset']}{split} {r['ways']}-way {r['shots']}-shot"
    steps = r.get("adapt_steps")
    after = f", {steps} step{'s' if steps != 1 else ''}" if steps else ""
    after += "".join(f", {key} {value}" for key, value in (r.get("test_settings") or {}).items())
    # an eval's own data settings and, off the test split, its seed: rows that differ only there
    # (another horizon; the trainer's validation seed or another) are told apart
    after += "".join(f", {item.removeprefix('data.args.')}" for item in r.get("data_settings") or [])
    if r.get("split", "test") != "test":
        after += f", {r['split']} tasks, seed {r['seed']}"
    if r.get("metric") == "return":  # meta-RL: tasks are environments, shots are rollouts
        env = (r.get("data_args") or {}).get("env_name")
        trained = r.get("trained_on", r["dataset"])
        if trained != r["dataset"]:  # another task family than the run's, and the tested one's settings
            after += f", trained on {trained}"
        name = f"{r['dataset']}{f' {env}' if env else ''} meta-RL"
        per_trial = (r.get("learner") or {}).get("episodes_per_trial")
        if per_trial:  # RL²: no support rollouts; it adapts within each of `queries` trials
            return f"{name}, {r['queries']} trials of {per_trial} episodes{after}"
        # rollouts scored after each step, where they differ
        scored = f", {r['queries']} scored" if r.get("queries") not in (None, r["shots"]) else ""
        return f"{name}, {r['shots']} rollouts/step{scored}{after}"
    return f"{r['dataset']} {r['shots']}-shot regression{after}"


def _mse(value: float, ci: float) -> str:
    return f"{value:.3f} ± {ci:.3f}" if abs(value) < 1e3 else f"{value:.2g} ± {ci:.2g}"  # a blow-up, not a fit


def _success(r: dict) -> tuple[str, str] | None:
    """The success rate after the last adaptation step (Meta-World: a rollout succeeds if it does at
    any step), as (other_metrics key, label), or None for tasks that have none."""
    steps = sorted(
        int(k.rpartition("_")[2]) for k in r.get("other_metrics") or {} if k.startswith("success_rate_after_")
    )
    return (f"success_rate_after_{steps[-1]}", "success") if steps else None


def _row(r: dict) -> str:
    preset = " ".join([r["preset"]] + [f"`{o}`" for o in r.get("overrides") or []])
    machine = f"{r['machine']['cores']}-core {r['machine']['device']}" if r.get("machine") else "–"
    minutes = (r.get("train_seconds") or 0) / 60
    if "benchmark" in r:  # Lake: 400 trials, scored as Lake's demo (no CI); training as in the run's eval.json
        return (
            f"| {r['method']} | {r['benchmark']} | {100 * r['accuracy']:.2f} | – | {r.get('train_steps', '–')} | "
            f"{minutes:.1f} | {machine} | {preset} | {r['run']} |"
        )
    task = _benchmark(r)
    metric = r.get("metric") or ("accuracy" if "accuracy" in r else "mse")
    percent = metric in PERCENT_METRICS
    if r.get("diverged_episodes"):
        value = f"diverged on {r['diverged_episodes']} of {r['episodes']} episodes"
    elif percent:
        value = f"{100 * r[metric]:.2f} ± {100 * r['ci95']:.2f}"
    elif metric == "return":  # large by nature (Meta-World: thousands), not a blow-up
        value = f"{r[metric]:.1f} ± {r['ci95']:.1f}"
    else:
        value = _mse(r[metric], r["ci95"])
    if metric not in ("accuracy", "mse"):  # the column shows accuracy (%) or MSE unless it says otherwise
        value = f"{metric} {value}"
    reference = r.get("reference", {}).get(metric)
    reference = "–" if reference is None else (f"{100 * reference:.1f}" if percent else f"{reference}")
    success = _success(r)  # Meta-World's score, beside the return
    if success is not None:
        key, label = success
        scored = r["other_metrics"][key]
        value += f"; {label} {100 * scored['mean']:.1f}% ± {100 * scored['ci95']:.1f}"
        paper = r.get("reference", {}).get(key)
        if paper is not None:
            reference = (
                f"{label} {100 * paper:.1f}%" if reference == "–" else f"{reference}; {label} {100 * paper:.1f}%"
            )
    return (
        f"| {r['method']} | {task} ({r['episodes']} ep.) | {value} | {reference} | "
        f"{trained_steps(r)} | {minutes:.1f} | {machine} | {preset} | {r['run']} |"
    )


def results_table(run_dirs: list[str | Path]) -> str:
    """Markdown table: method, benchmark, metric ± 95% CI (accuracy in %, or MSE), paper value,
    training steps, training minutes, machine, preset and run folder."""
    header = (
        "| method | benchmark | result ± 95% CI | paper | steps | train min | machine | preset and overrides | run |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    return "\n".join([header] + [_row(r) for r in _records([Path(d) for d in run_dirs])]) + "\n"


def results_plot(run_dirs: list[str | Path], path: str | Path) -> None:
    """One panel per classification benchmark: accuracy ± 95% CI per run, the paper's value as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .utils import atomic_write

    records = [r for r in _records([Path(d) for d in run_dirs]) if "accuracy" in r]
    if not records:
        raise FastAdaptError("no classification results in these run folders to plot")
    benchmarks = sorted({_benchmark(r) for r in records})
    fig, axes = plt.subplots(
        1, len(benchmarks), figsize=(5.5 * len(benchmarks), 0.45 * len(records) + 1.8), squeeze=False
    )
    for ax, bench in zip(axes[0], benchmarks):
        rows = sorted((r for r in records if _benchmark(r) == bench), key=lambda r: r["accuracy"])
        labels = [f"{r['method']} ({Path(r['run']).name})" for r in rows]
        values = [100 * r["accuracy"] for r in rows]
        errors = [100 * r.get("ci95", 0.0) if "benchmark" not in r else 0.0 for r in rows]
        ax.barh(range(len(rows)), values, xerr=errors, color="tab:blue", alpha=0.8, capsize=3)
        for i, r in enumerate(rows):
            paper = (r.get("reference") or {}).get("accuracy")
            if paper is not None:
                ax.plot(100 * paper, i, marker="|", markersize=14, color="tab:red")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        if bench.startswith("Lake"):
            for value, name in LAKE_ANCHORS:
                ax.axvline(value, color="gray", linestyle=":", linewidth=1)
                ax.text(value, len(rows) - 0.4, name, rotation=90, fontsize=7, va="top", ha="right", color="gray")
        low = min(values) - 5
        ax.set(xlim=(max(0.0, low), 100), xlabel="accuracy (%), 95% CI; red tick: paper", title=bench)
    fig.tight_layout()
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def trained_steps(record: dict) -> str:
    """Training steps, and the tested step where validation selected an earlier one ("500 (tested: 70)")."""
    selected = record.get("selected_step")
    tested = f" (tested: {selected})" if selected is not None and selected != record["train_steps"] else ""
    return f"{record['train_steps']}{tested}"


def by_episode(record: dict) -> bool:
    """Whether an RL eval record adapts by memory across the episodes of a trial (RL²: its k-th
    figure is episode k + 1's) rather than by gradient steps (its k-th figure is after k steps)."""
    return "episodes_per_trial" in (record.get("learner") or {})


def print_result(result: dict) -> None:
    """The one-line summary of an eval record that `fastadapt train` / `eval` print (and a warning
    line when adaptation diverged on some test episodes)."""
    metric = result.get("metric") or ("accuracy" if "accuracy" in result else "mse")
    value, ci = result[metric], result["ci95"]
    shown = f"{100 * value:.2f}% ± {100 * ci:.2f}" if metric in PERCENT_METRICS else f"{value:.4f} ± {ci:.4f}"
    task = f"{result['ways']}-way {result['shots']}-shot" if result.get("ways") else f"{result['shots']}-shot"
    if metric == "return":  # meta-RL: tasks are environments, shots and queries are rollouts
        if by_episode(result):  # RL²: no gradient steps, the GRU adapts over a trial's episodes
            after = f"in episode {result['learner']['episodes_per_trial']} of each trial"
            rollouts = f"{result['queries']} trials scored"
        else:
            steps = result.get("adapt_steps")
            after = f"after {steps} adaptation step{'' if steps == 1 else 's'}"
            rollouts = f"{result['shots']} rollouts per step, {result['queries']} scored"
        print(
            f"{result['method']} {result['dataset']}: return {shown} {after} "
            f"(95% CI, {result['episodes']} {result['split']} tasks, {rollouts}, seed {result['seed']}"
            + "".join(f", {k} {v}" for k, v in (result.get("test_settings") or {}).items())
            + "; the JSON: after each step)"
        )
    else:
        print(
            f"{result['method']} {result['dataset']} {task}: test {metric} {shown} (95% CI, "
            f"{result['episodes']} episodes, seed {result['seed']}, BN {result.get('bn_mode', 'none')})"
        )
    if result.get("diverged_episodes"):
        steps = f" after {result['adapt_steps']} steps" if result.get("adapt_steps") else ""
        print(
            f"warning: adaptation diverged{steps} (non-finite {metric}) on {result['diverged_episodes']} of "
            f"{result['episodes']} test episodes; the mean is not finite"
        )
