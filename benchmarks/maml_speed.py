"""Second-order MAML meta-training speed: fastadapt against `higher`, measured in one run.

Conv-4 (64 channels, transductive BN), 28x28 Omniglot-shaped 5-way 1-shot episodes with 15
queries per class, one inner step (lr 0.4), meta-batch 32, Adam. Both sides train the same
module on the same tasks. Each measurement runs in a fresh forked child so that its peak
memory (peak RSS growth of the child and its engine workers during a step) is its own; the two sides alternate over
several rounds and the median is reported, since this machine is noisy.

Prints one JSON line: fastadapt_tasks_per_s, higher_tasks_per_s, ratio, fastadapt_peak_mb,
higher_peak_mb and the settings.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastadapt.data.episode import Episode  # noqa: E402
from fastadapt.engine import make_engine  # noqa: E402
from fastadapt.learners.optimization.maml import MAML  # noqa: E402
from fastadapt.models.backbones import Conv4  # noqa: E402


def make_tasks(n, ways, shots, queries, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Episode(torch.rand(ways * shots, 1, size, size, generator=g), torch.arange(ways).repeat_interleave(shots),
                    torch.rand(ways * queries, 1, size, size, generator=g), torch.arange(ways).repeat_interleave(queries),
                    ways=ways, shots=shots) for _ in range(n)]


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def fastadapt_steps(args, tasks, steps):
    torch.manual_seed(0)
    backbone = Conv4(out_features=args.ways, bn="transductive", channels_last=args.channels_last)
    learner = MAML(backbone, inner_steps=args.inner_steps, inner_lr=args.inner_lr)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    engine = make_engine(args.engine, learner, torch.device("cpu"), len(tasks), args.workers)

    def step():
        optimizer.zero_grad(set_to_none=True)
        engine.meta_gradient(learner, tasks)
        optimizer.step()
    workers = [process.pid for process, _, _ in getattr(engine, "children", [])]
    try:
        return _time(step, steps, workers) + (engine.name,)
    finally:
        engine.close()


def higher_steps(args, tasks, steps):
    import higher
    torch.manual_seed(0)
    model = Conv4(out_features=args.ways, bn="transductive")
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    inner = torch.optim.SGD(model.parameters(), lr=args.inner_lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for t in tasks:
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(args.inner_steps):
                    diffopt.step(F.cross_entropy(fmodel(t.support_x), t.support_y))
                (F.cross_entropy(fmodel(t.query_x), t.query_y) / len(tasks)).backward()
        optimizer.step()
    return _time(step, steps) + ("higher.innerloop_ctx",)


def _time(step, steps, workers=()):
    """Median seconds per meta-batch, and peak memory of a step: the growth of peak RSS over the
    resident set before the first step, summed over this process and its engine workers."""
    pids = [os.getpid(), *workers]
    base = sum(_status_mb(pid, "VmRSS") for pid in pids)
    for pid in pids:
        _reset_peak(pid)
    step()  # warm-up (allocator, oneDNN primitive cache), not timed
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = sum(_status_mb(pid, "VmHWM") for pid in pids)
    return statistics.median(times), max(peak - base, 0.0)


def _child(fn, args, conn):
    torch.set_num_threads(args.threads)
    tasks = make_tasks(args.meta_batch, args.ways, args.shots, args.queries, args.size)
    conn.send(fn(args, tasks, args.steps))


def measure(fn, args):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(fn, args, child))
    process.start()
    result = parent.recv()
    process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--channels-last", type=int, default=1, help="fastadapt's CPU layout (1 = NHWC, the trainer's CPU default)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    runs = {"fastadapt": [], "higher": []}
    for _ in range(args.rounds):
        runs["higher"].append(measure(higher_steps, args))
        runs["fastadapt"].append(measure(fastadapt_steps, args))
    out = {}
    for name, results in runs.items():
        seconds = statistics.median(r[0] for r in results)
        out[f"{name}_tasks_per_s"] = round(args.meta_batch / seconds, 2)
        out[f"{name}_peak_mb"] = round(statistics.median(r[1] for r in results), 1)
        out[f"{name}_engine"] = results[0][2]
    out["ratio"] = round(out["fastadapt_tasks_per_s"] / out["higher_tasks_per_s"], 3)
    out.update(benchmark="maml_speed", order="second", meta_batch=args.meta_batch, inner_steps=args.inner_steps,
               ways=args.ways, shots=args.shots, queries=args.queries, image_size=args.size,
               threads=args.threads, channels_last=bool(args.channels_last), cores=len(os.sched_getaffinity(0)), torch=torch.__version__,
               rounds=args.rounds, steps_per_round=args.steps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
