"""Write RESULTS.md: the table that `fastadapt results` generates from results/*/, the NP/CNP
context-size table from results/*/np_regression.json, the tuning demo's results/*/tune-summary.md
(scripts/tune_summary.py), and the figures; the notes around them
live in results/head.md and results/notes.md.

    .venv/bin/python scripts/results_md.py          # after `bash scripts/reproduce.sh table`
"""

from __future__ import annotations

import json
from pathlib import Path

from fastadapt.results import results_table
from fastadapt.rl.report import by_episode, rl_plot, rl_records, rl_table, success_table
from fastadapt.utils import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def np_table(paths: list[Path]) -> str:
    rows = [
        "| run | method | train steps | context points | log-likelihood / target point | MSE |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        for c in r["results"]:
            rows.append(
                f"| {path.parent.name} | {r['method']} | {r['train_steps']} | {c['context']} | "
                f"{c['log_likelihood']:.3f} ± {c['log_likelihood_ci95']:.3f} | {c['mse']:.4f} ± {c['mse_ci95']:.4f} |"
            )
    return "\n".join(rows)


def main() -> None:
    results = ROOT / "results"
    runs = sorted(p for p in results.iterdir() if (p / "config.yaml").is_file())
    table = results_table([p.relative_to(ROOT) for p in runs])
    np_runs = sorted(results.glob("*/np_regression.json"))
    parts = [(results / "head.md").read_text().rstrip(), table.rstrip()]
    if np_runs:
        parts += [
            "## Neural processes against the number of context points (1-D GP regression)",
            "Fixed test tasks (the run's eval seed), 100 target points each; "
            "`python scripts/np_regression.py RUN --context 1 2 5 10 20 50`.",
            np_table(np_runs),
        ]
    rl = rl_records(runs)  # meta-RL: return after 0..k adaptation steps, table and plot
    if rl:
        rl_plot(rl, results / "meta_rl.png")
        steps, memory = [r for r in rl if not by_episode(r)], [r for r in rl if by_episode(r)]
        paper_tests = [r for r in steps if r.get("paper_test")]
        steps = [r for r in steps if not r.get("paper_test")]
        parts += [
            "## Meta-RL: return after each adaptation step (mean ± 95% CI over the fixed test tasks)",
            rl_table(steps) if steps else "",
            "On the paper's own test where a preset names one (`reference.test`; 2D navigation: the MAML "
            "authors' 40 goals, split `paper`, and their 40 rollouts per step):"
            if paper_tests
            else "",
            rl_table(paper_tests) if paper_tests else "",
            "RL² (`rl2`) takes no gradient step; its table gives the return in each episode of a trial "
            "(the GRU's memory of the earlier episodes is its adaptation):"
            if memory
            else "",
            rl_table(memory, episodes=True) if memory else "",
            "ML1 returns are Meta-World v3's dense rewards over 500 steps.",
            "![return against adaptation steps](results/meta_rl.png)",
        ]
        if success_table(rl):
            parts += [
                "### Meta-World: meta-test success rate (success at any step of a rollout; mean ± 95% CI over "
                "the test tasks)",
                success_table(steps),
                success_table(memory, episodes=True),
            ]
        parts = [p for p in parts if p]
    # generated sections of other jobs (scripts/tune_summary.py: the hyper-parameter search demo)
    parts += [p.read_text().rstrip() for p in sorted(results.glob("*/tune-summary.md"))]
    text_table = results / "text" / "table.md"
    if text_table.is_file():  # written by benchmarks/text_table.py from results/text/*.json
        parts += [
            "## Few-shot text: full-way K-shot intent classification (all-MiniLM-L6-v2)",
            "`bash scripts/reproduce.sh run text-fullway`; details in benchmarks/README.md.",
            text_table.read_text().rstrip(),
            "![accuracy against K](results/text/accuracy_vs_shots.png)",
        ]
    parts.append((results / "notes.md").read_text().rstrip())
    atomic_write_text(ROOT / "RESULTS.md", "\n\n".join(parts) + "\n")
    print(f"wrote {ROOT / 'RESULTS.md'} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
