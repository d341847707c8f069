"""Results table (markdown) generated from run folders, so reported numbers come from runs."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import FastAdaptError


def _records(run_dirs: list[Path]) -> list[dict]:
    records = []
    for run_dir in run_dirs:
        files = sorted(Path(run_dir).glob("eval*.json"))
        if not files:
            raise FastAdaptError(f"{run_dir} has no eval.json; train or evaluate it first (`fastadapt eval {run_dir}`)")
        for path in files:
            record = json.loads(path.read_text())
            record["run"] = str(run_dir)
            records.append(record)
        lake = Path(run_dir) / "lake.json"
        if lake.is_file():
            record = json.loads(lake.read_text())
            records.append({**record, "run": str(run_dir), "benchmark": "Lake 20-run (20-way 1-shot)"})
    return records


def _row(r: dict) -> str:
    if "benchmark" in r:  # Lake
        value = f"{100 * r['accuracy']:.2f}"
        return f"| {r['method']} | {r['benchmark']} | {value} | – | – | – | – | {r['preset']} | {r['run']} |"
    task = f"{r['ways']}-way {r['shots']}-shot" if r.get("ways") else f"{r['shots']}-shot regression"
    metric = "accuracy" if "accuracy" in r else "mse"
    value = f"{100 * r[metric]:.2f} ± {100 * r['ci95']:.2f}" if metric == "accuracy" else f"{r[metric]:.3f} ± {r['ci95']:.3f}"
    reference = r.get("reference", {}).get(metric)
    reference = "–" if reference is None else (f"{100 * reference:.1f}" if metric == "accuracy" else f"{reference}")
    minutes = (r.get("train_seconds") or 0) / 60
    preset = " ".join([r["preset"]] + [f"`{o}`" for o in r.get("overrides", [])])
    machine = f"{r['machine']['cores']}-core {r['machine']['device']}"
    return (f"| {r['method']} | {r['dataset']} {task} ({r['episodes']} ep.) | {value} | {reference} | "
            f"{r['train_steps']} | {minutes:.1f} | {machine} | {preset} | {r['run']} |")


def results_table(run_dirs: list[str | Path]) -> str:
    """Markdown table: method, benchmark, metric ± 95% CI (accuracy in %, or MSE), paper value,
    training steps, training minutes, machine, preset and run folder."""
    header = ("| method | benchmark | result ± 95% CI | paper | steps | train min | machine | preset and overrides | run |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    return "\n".join([header] + [_row(r) for r in _records([Path(d) for d in run_dirs])]) + "\n"
