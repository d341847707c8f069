"""How the tasks of a meta-batch are run: an engine computes the meta-gradient of a batch.

The choice is made by measurement, per device (see benchmarks/maml_speed.py):
- `serial`: one task after another, one backward each (gradients accumulate in `.grad`). The
  only choice for learners with mutable state (BatchNorm running averages) and the GPU path.
- `fork` (CPU): the meta-batch is sharded over single-threaded worker processes that share
  the parameters' memory, the same sharding that torch.distributed ranks use. On 2 cores it
  measured 1.42-1.66x `higher` against 1.22-1.48x for the serial loop (both NHWC), at ~2.5x
  the memory (benchmarks/README.md).
Every engine returns the gradient of the mean task loss, summed in a fixed order, so a run
is reproducible (bitwise, for a fixed engine and worker count).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Sequence

import torch

from .data.episode import Episode
from .errors import FastAdaptError
from .learners.base import Learner

Metrics = list[dict[str, float]]


def _accumulate_shard(learner: Learner, tasks: Sequence[Episode], scale: float) -> Metrics:
    metrics = []
    for task in tasks:
        loss, task_metrics = learner.task_loss(task)
        (loss * scale).backward()
        metrics.append(task_metrics)
    return metrics


class SerialEngine:
    name = "serial"

    def meta_gradient(self, learner: Learner, tasks: Sequence[Episode], progress: tuple[int, int] | None = None) -> Metrics:
        """Fill `.grad` of the learner's parameters with the gradient of the mean task loss.
        `progress` = (step, total steps) is handed to `learner.on_step` first."""
        if progress is not None:
            learner.on_step(*progress)
        return _accumulate_shard(learner, tasks, 1.0 / len(tasks))

    def close(self) -> None:
        pass


def _worker(conn, learner: Learner, grad_buffers: list[torch.Tensor]) -> None:
    torch.set_num_threads(1)
    params = [p for p in learner.parameters() if p.requires_grad]
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        tasks, scale, progress = message
        try:
            if progress is not None:
                learner.on_step(*progress)
            for p in params:
                p.grad = None
            metrics = _accumulate_shard(learner, tasks, scale)
            for p, buffer in zip(params, grad_buffers):
                buffer.copy_(p.grad) if p.grad is not None else buffer.zero_()
            conn.send(("ok", metrics))
        except Exception:  # report, keep serving: the parent decides what to do
            conn.send(("error", traceback.format_exc()))


class ForkEngine:
    """Shards a meta-batch over `workers` single-threaded processes (the parent is one of them).

    Parameters live in shared memory, so the optimiser's in-place updates in the parent are
    seen by the workers without copying; only the episodes and the gradients travel.
    """

    name = "fork"

    def __init__(self, learner: Learner, workers: int):
        if not learner.stateless:
            raise FastAdaptError("engine 'fork' needs a stateless learner (no BatchNorm running "
                                 "averages); set train.engine=serial or use bn: transductive")
        if any(p.device.type != "cpu" for p in learner.parameters()):
            raise FastAdaptError("engine 'fork' runs on CPU only; set train.engine=serial for GPUs")
        self.workers = workers
        self.params = [p for p in learner.parameters() if p.requires_grad]
        learner.share_memory()
        ctx = mp.get_context("fork")
        self.children = []
        for _ in range(workers - 1):
            buffers = [torch.zeros_like(p).share_memory_() for p in self.params]
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child_end, learner, buffers), daemon=True)
            process.start()
            child_end.close()
            self.children.append((process, parent_end, buffers))
        self.learner = learner

    def meta_gradient(self, learner: Learner, tasks: Sequence[Episode], progress: tuple[int, int] | None = None) -> Metrics:
        if learner is not self.learner:
            raise ValueError("this ForkEngine was built for another learner")
        scale = 1.0 / len(tasks)
        shards = [list(tasks[i::self.workers]) for i in range(self.workers)]
        for (_, conn, _), shard in zip(self.children, shards[1:]):
            conn.send((shard, scale, progress))
        if progress is not None:
            learner.on_step(*progress)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            metrics = _accumulate_shard(learner, shards[0], scale)
        finally:
            torch.set_num_threads(threads)
        shard_metrics = [metrics]
        errors = []
        for process, conn, buffers in self.children:
            status, payload = conn.recv()
            if status != "ok":
                errors.append(payload)
                continue
            shard_metrics.append(payload)
            for p, buffer in zip(self.params, buffers):
                if p.grad is None:
                    p.grad = buffer.clone()
                else:
                    p.grad.add_(buffer)
        if errors:
            raise RuntimeError("a fork-engine worker failed:\n" + errors[0])
        # Report metrics in task order, whatever the sharding.
        ordered: Metrics = [{}] * len(tasks)
        for w, shard in enumerate(shard_metrics):
            ordered[w::self.workers] = shard
        return ordered

    def close(self) -> None:
        for process, conn, _ in getattr(self, "children", []):
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        self.children = []

    def __del__(self):
        self.close()


ENGINES = ("auto", "serial", "fork")


def make_engine(name: str, learner: Learner, device: torch.device, meta_batch: int, workers: int = 0):
    """Pick the engine. `auto` uses worker processes on a multi-core CPU for stateless learners
    with a meta-batch of at least two tasks, and the serial loop everywhere else."""
    if name not in ENGINES:
        raise FastAdaptError(f"unknown engine {name!r} (train.engine); choose one of {ENGINES}")
    workers = workers or min(len(os.sched_getaffinity(0)), meta_batch)
    if name == "auto":
        use_fork = device.type == "cpu" and learner.stateless and meta_batch >= 2 and workers >= 2
        name = "fork" if use_fork else "serial"
    if name == "fork":
        return ForkEngine(learner, max(1, min(workers, meta_batch)))
    return SerialEngine()
