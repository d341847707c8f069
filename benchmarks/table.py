"""Markdown tables of a `maml_speed.py` JSON-lines file: speed per (algorithm, inner steps,
meta-batch) and peak memory per (algorithm, inner steps), each against `higher`.

    .venv/bin/python benchmarks/table.py benchmarks/maml_speed.jsonl

When a configuration was measured more than once (appended runs), the last line counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMPLS = ["higher", "torchopt", "fastadapt-auto", "fastadapt-serial", "fastadapt-serial-ckpt", "fastadapt-vmap"]


def load(path: Path) -> dict:
    """{(algo, inner_steps, meta_batch, impl): row}, the last measurement of each."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            row = json.loads(line)
            rows[(row["algo"], row["inner_steps"], row["meta_batch"], row["impl"])] = row
    return rows


def cell(row: dict | None, value: str, ratio: str) -> str:
    if row is None:
        return ""
    if "error" in row:
        return "error"
    if value not in row:
        return ""
    text = f"{row[value]:g}"
    return f"{text} ({row[ratio]:.2f}x)" if ratio in row and row["impl"] != "higher" else text


def tables(rows: dict) -> str:
    impls = [i for i in IMPLS if any(k[3] == i for k in rows)]
    configs = sorted(
        {k[:3] for k in rows},
        key=lambda c: (
            ["maml", "fomaml", "anil", "metasgd"].index(c[0]) if c[0] in ("maml", "fomaml", "anil", "metasgd") else 9,
            c[1],
            c[2],
        ),
    )
    engines = sorted({r.get("engine", "") for k, r in rows.items() if k[3] == "fastadapt-auto"} - {""})
    head = "| algorithm | inner steps | meta-batch | " + " | ".join(impls) + " |"
    rule = "|" + " --- |" * (3 + len(impls))
    out = [f"Tasks/s (x `higher`); fastadapt-auto ran the `{', '.join(engines) or '?'}` engine.", "", head, rule]
    for algo, steps, batch in configs:
        out.append(
            f"| {algo} | {steps} | {batch} | "
            + " | ".join(cell(rows.get((algo, steps, batch, i)), "tasks_per_s", "speed_vs_higher") for i in impls)
            + " |"
        )
    memory = {}
    for (algo, steps, _batch, impl), row in rows.items():
        if "peak_mb" in row:
            memory.setdefault((algo, steps), {})[impl] = row  # the same memory run for every meta-batch on CPU
    if memory:
        out += [
            "",
            "Peak memory of one meta-training step, MB (x `higher`).",
            "",
            "| algorithm | inner steps | " + " | ".join(impls) + " |",
            "|" + " --- |" * (2 + len(impls)),
        ]
        for algo, steps in sorted(memory, key=lambda c: (configs.index(next(k for k in configs if k[:2] == c)),)):
            out.append(
                f"| {algo} | {steps} | "
                + " | ".join(cell(memory[(algo, steps)].get(i), "peak_mb", "memory_vs_higher") for i in impls)
                + " |"
            )
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", type=Path)
    print(tables(load(parser.parse_args().jsonl)))


if __name__ == "__main__":
    main()
