"""Environment steps per second of meta-RL rollouts, against the raw vectorised environment.

For each task family, in one process and with the same K tasks x N rollouts batch:
- `raw`: the batched environment stepped with random actions (numpy), nothing else: the limit;
- `policy`: seeded rollouts (`fastadapt.rl.collect`) of the MAML preset's Gaussian MLP policy
  (2x100): the policy's forward pass and the per-task noise in the loop;
- `adapt`: one MAML-RL adaptation as at test time and in training: support rollouts, advantages
  (linear baseline, GAE), one policy-gradient inner step, then query rollouts of the K adapted
  policies (vmapped); steps counted are all the rollouts' steps.
Each figure is the median of `--repeats`, with its ratio to `raw`. One JSON line per family.

    OMP_NUM_THREADS=1 python benchmarks/rl_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import numpy as np
import torch

from fastadapt.config import load_config
from fastadapt.data import build_suite
from fastadapt.learners import build_learner
from fastadapt.rl.envs import make_env
from fastadapt.utils import machine_info

FAMILIES = {  # dataset: (tasks, rollouts per task)
    "point2d-nav": (20, 20),
    "cheetah-vel": (2, 10),
}


def raw_steps_per_s(tasks, per_task: int) -> float:
    env = make_env(tasks, per_task)
    rng = np.random.default_rng(0)
    k, horizon, dim = len(tasks), tasks[0].horizon, env.action_dim
    env.reset(np.zeros((k, per_task), dtype=np.int64))
    actions = rng.standard_normal((horizon, k, per_task, dim))
    started = time.perf_counter()
    for t in range(horizon):
        env.step(actions[t])
    elapsed = time.perf_counter() - started
    env.close()
    return k * per_task * horizon / elapsed


def measure(dataset: str, repeats: int) -> dict:
    k, n = FAMILIES[dataset]
    config = load_config(
        "maml-trpo-point2d",
        [f"data.dataset={dataset}", "data.args={}", f"train.episodes.shots={n}", f"train.episodes.queries={n}"],
    )
    suite = build_suite(config)
    learner = build_learner(config, suite.input_shape)
    tasks = [suite.train_task(i) for i in range(k)]

    def policy() -> int:
        return learner._collect(tasks, learner.params(), False, n, "bench").steps

    def adapt() -> int:
        adapted, data = learner.adapt_online(tasks, learner.params(), 1, graph=False)
        query = learner._collect(tasks, adapted, True, n, "bench-query")
        return data[0][0].steps + query.steps

    out = {"family": dataset, "tasks": k, "rollouts_per_task": n, "horizon": tasks[0].horizon}
    raw = statistics.median(raw_steps_per_s(tasks, n) for _ in range(repeats))
    out["raw_steps_per_s"] = round(raw)
    for name, fn in (("policy", policy), ("adapt", adapt)):
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            steps = fn()
            rates.append(steps / (time.perf_counter() - started))
        rate = statistics.median(rates)
        out[f"{name}_steps_per_s"] = round(rate)
        out[f"{name}_vs_raw"] = round(rate / raw, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    torch.manual_seed(0)
    for dataset in args.families:
        if dataset.startswith("cheetah") and importlib.util.find_spec("mujoco") is None:
            print(json.dumps({"family": dataset, "skipped": "mujoco is not installed (pip install 'fastadapt[rl]')"}))
            continue
        record = measure(dataset, args.repeats)
        record["threads"] = torch.get_num_threads()
        record["machine"] = machine_info(torch.device("cpu"))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
