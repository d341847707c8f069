"""The study folder's report: `trials.csv`, `results.md` and Optuna's plots (optimisation history,
parameter importance (fANOVA), parallel coordinates, intermediate validation scores), all from
the study's storage, so any worker (or a later `fastadapt tune` with nothing left to run) writes
the same report."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

from .utils import atomic_write, atomic_write_text

PLOTS = {
    "history.png": "plot_optimization_history",
    "importance.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
    "intermediate.png": "plot_intermediate_values",
}


def _value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def trial_rows(study) -> list[dict]:
    """One dict per trial: number, state, value, the parameters, run folder, selected step,
    training seconds, the trial it retries, whether it is the preset's default, why it diverged."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value if t.values else None,
                **{f"param:{k}": v for k, v in t.params.items()},
                "last_validation_step": max(t.intermediate_values) if t.intermediate_values else None,
                "best_step": t.user_attrs.get("best_step"),
                "train_seconds": t.user_attrs.get("train_seconds"),
                "run_dir": t.user_attrs.get("run_dir"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "preset_default": bool(t.user_attrs.get("preset_default")),
                "diverged": t.user_attrs.get("diverged"),
            }
        )
    return rows


def _csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def _plots(study, study_dir: Path, metric: str) -> dict[str, str]:
    """Write each plot; returns {file: reason} for those Optuna cannot draw yet (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    skipped = {}
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(ovm, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            plt.close("all")
            continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = axes.figure
        if name in ("history.png", "intermediate.png"):
            axes.set_ylabel(f"validation {metric}")
        if name == "intermediate.png":
            axes.set_xlabel("meta-training step")
            legend = axes.get_legend()
            if legend is not None and len(study.trials) > 12:  # one entry per trial: unreadable beyond a dozen
                legend.remove()
        figure.set_size_inches(max(8.0, figure.get_figwidth()), max(5.0, figure.get_figheight()))
        figure.tight_layout()
        atomic_write(study_dir / name, lambda f, fig=figure: fig.savefig(f, format="png", dpi=100))
        plt.close(figure)
    return skipped


def markdown(study, record: dict, rows: list[dict], skipped: dict[str, str]) -> str:
    """results.md: what was searched, the best trial against the preset's default, every trial."""
    metric, direction = record["metric"], record["direction"]
    params = list((record.get("space") or {}).get("params") or {})
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines = [
        f"# Study {study.study_name}",
        "",
        f"Objective: validation {metric} on the run's fixed validation episodes ({direction}); "
        f"the best validation of each trial (the checkpoint a run keeps). Test episodes are not used.",
        "",
        f"Trials: {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}).",
    ]
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if complete:
        best = min(complete, key=lambda r: r["value"] if direction == "minimize" else -r["value"])
        chosen = ", ".join(f"{k} = {_value(best.get('param:' + k))}" for k in params)
        lines += ["", f"**Best: trial {best['trial']}, validation {metric} {_value(best['value'])}** ({chosen})."]
        default = [r for r in complete if r["preset_default"]]
        if default:
            lines.append(
                f"The preset's default (trial {default[0]['trial']}, same trial settings): {_value(default[0]['value'])}."
            )
        lines += ["", "Full run from the best trial: `fastadapt train --from-study STUDY_FOLDER`."]
    ranked = sorted(
        rows,
        key=lambda r: (
            r["state"] != "complete",
            r["value"] is None,
            (r["value"] or 0) * (1 if direction == "minimize" else -1),
            r["trial"],
        ),
    )
    header = ["trial", "state", f"validation {metric}", *params, "last val. step", "run folder", "note"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in ranked:
        note = []
        if r["preset_default"]:
            note.append("preset default")
        if r["retry_of"] is not None:
            note.append(f"retry of {r['retry_of']}")
        if r["diverged"]:
            note.append("diverged")
        cells = [
            str(r["trial"]),
            r["state"],
            _value(r["value"]),
            *(_value(r.get("param:" + k)) for k in params),
            _value(r["last_validation_step"]),
            r["run_dir"] or "",
            ", ".join(note),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    for name in PLOTS:
        if name in skipped:
            lines.append(f"- {name}: not drawn ({skipped[name]})")
        else:
            lines.append(f"- ![{name[:-4]}]({name})")
    lines += ["", "All trials in one TensorBoard: `tensorboard --logdir STUDY_FOLDER/trials`.", ""]
    return "\n".join(lines)


def write_report(job) -> None:
    """trials.csv, results.md and the plots, into the study folder."""
    import optuna

    from .tune_storage import open_storage

    study_dir = Path(job.study_dir)
    storage = open_storage(job.storage, job.heartbeat)
    study = optuna.load_study(study_name=job.study, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial shows as failed (and queued)
    rows = trial_rows(study)
    atomic_write_text(study_dir / "trials.csv", _csv(rows))
    skipped = _plots(study, study_dir, job.info["metric"])
    atomic_write_text(study_dir / "results.md", markdown(study, job.info, rows, skipped))
