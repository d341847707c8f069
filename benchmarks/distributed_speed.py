"""Meta-training speed on several torch.distributed ranks against one process, in one run.

Second-order MAML, Conv-4 (64 channels, transductive BN, NHWC as the trainer uses on CPU), 28x28
Omniglot-shaped 5-way 1-shot episodes with 15 queries per class (random tensors, a pure function of
the task index), one inner step of 0.4, Adam; meta-batch 32 by default. Implementations:
- `ranks-2x1`: two gloo ranks of one thread each, started by torchrun (`torch.distributed.run
  --standalone`), each running its block of 16 tasks with the serial loop; the gradients are
  all-gathered and added in rank order (fastadapt.distributed.DistributedEngine);
- `serial-1x2`: one process, the serial loop with two intra-op threads;
- `fork-2`: one process, the fork engine with two single-threaded workers (what `auto` picks on 2
  cores), which shards the meta-batch the same way but shares memory instead of sending gradients.
Each measurement is a fresh process (group): a warm-up meta-batch, then `--steps` timed ones
(ranks start and stop the clock at a barrier); implementations alternate over `--rounds` and the
median tasks/s is reported with every round. The load average (`/proc/loadavg`) before and after
each measurement is recorded: the figures mean little on a busy machine. Prints one JSON line per
implementation (`speed_vs_serial`, `speed_vs_fork`), then a summary line; `--out FILE` appends them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMPLS = ("ranks-2x1", "serial-1x2", "fork-2")


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def measure(args) -> dict:
    """Runs inside the measured process (or each rank): build, warm up, time `args.steps` steps."""
    import torch
    import torch.distributed as dist

    from fastadapt.data.episode import Episode
    from fastadapt.distributed import setup
    from fastadapt.engine import make_engine
    from fastadapt.learners.optimization.maml import MAML
    from fastadapt.models.backbones import Conv4

    torch.set_num_threads(args.threads)
    context, device = setup(torch.device("cpu"))
    torch.manual_seed(0)
    learner = MAML(Conv4(out_features=5, bn="transductive", channels_last=True), inner_steps=1, inner_lr=0.4)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    engine = make_engine(args.engine, learner, device, args.meta_batch, workers=args.workers, context=context)

    def task(index: int) -> Episode:
        g = torch.Generator().manual_seed(index)
        return Episode(
            torch.rand(5, 1, 28, 28, generator=g),
            torch.arange(5),
            torch.rand(75, 1, 28, 28, generator=g),
            torch.arange(5).repeat_interleave(15),
            ways=5,
            shots=1,
        )

    def step(number: int) -> None:
        tasks = [task(number * args.meta_batch + i) for i in engine.shard(args.meta_batch)]
        optimizer.zero_grad(set_to_none=True)
        engine.meta_gradient(learner, tasks)
        optimizer.step()

    step(0)  # warm-up: allocator, oneDNN primitive cache, fork workers
    if context.active:
        dist.barrier()
    started = time.perf_counter()
    for number in range(1, args.steps + 1):
        step(number)
    if context.active:
        dist.barrier()
    seconds = time.perf_counter() - started
    engine.close()
    return {"tasks_per_s": args.steps * args.meta_batch / seconds, "engine": engine.name}


def run_one(impl: str, args) -> dict:
    """One measurement of `impl` in fresh processes; its result and the load around it."""
    common = ["--meta-batch", str(args.meta_batch), "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.json"
        worker = [__file__, "--worker", str(result_file), *common]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if impl == "ranks-2x1":
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
            command += [*worker, "--engine", "serial", "--threads", "1"]
        elif impl == "serial-1x2":
            command = [sys.executable, *worker, "--engine", "serial", "--threads", "2"]
            env["OMP_NUM_THREADS"] = "2"
        else:
            command = [sys.executable, *worker, "--engine", "fork", "--workers", "2", "--threads", "1"]
        load_before = _loadavg()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(result_file.read_text())
    return dict(result, load_before=load_before, load_after=_loadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-batches per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: measure, write the result here
    parser.add_argument("--engine", default="serial", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        result = measure(args)
        if int(os.environ.get("RANK", "0")) == 0:
            args.worker.write_text(json.dumps(result))
        return
    cores = len(os.sched_getaffinity(0))
    rounds: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for _ in range(args.rounds):
        for impl in IMPLS:
            rounds[impl].append(run_one(impl, args))
            print(f"{impl}: {rounds[impl][-1]}", file=sys.stderr, flush=True)  # progress: a round takes minutes
    median = {impl: statistics.median(r["tasks_per_s"] for r in rounds[impl]) for impl in IMPLS}
    lines = []
    for impl in IMPLS:
        lines.append(
            {
                "benchmark": "distributed_speed",
                "algo": "maml-second-order",
                "impl": impl,
                "engine": rounds[impl][0]["engine"],
                "meta_batch": args.meta_batch,
                "steps": args.steps,
                "cores": cores,
                "tasks_per_s": round(median[impl], 2),
                "rounds": [round(r["tasks_per_s"], 2) for r in rounds[impl]],
                "speed_vs_serial": round(median[impl] / median["serial-1x2"], 3),
                "speed_vs_fork": round(median[impl] / median["fork-2"], 3),
                "load": [[r["load_before"], r["load_after"]] for r in rounds[impl]],
            }
        )
    import torch

    lines.append({"benchmark": "distributed_speed", "summary": True, "torch": torch.__version__, "cores": cores})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    print(text, end="")
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
