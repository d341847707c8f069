"""How the tasks of a meta-batch are run: an engine computes the meta-gradient of a batch.

The choice is made by measurement, per device (see benchmarks/maml_speed.py):
- `serial`: one task after another, one backward each (gradients accumulate in `.grad`). The
  only choice for learners with mutable state (BatchNorm running averages), and the GPU path
  of learners that cannot run batched.
- `fork` (CPU): the meta-batch is sharded over single-threaded worker processes that share
  the parameters' memory, the same sharding that torch.distributed ranks use. On 2 cores it
  measured 1.42-1.66x `higher` against 1.22-1.48x for the serial loop (both NHWC), at ~2.5x
  the memory (benchmarks/README.md).
- `vmap` (the GPU path): the meta-batch is stacked and run as one batched computation by the
  learner's `batched_task_loss` (torch.func.vmap over tasks), `chunk_size` tasks per call to
  bound memory, optionally under torch.compile. On this 2-core CPU a naive vmap measured 0.4x
  `higher` (per-task convolutions become grouped ones), so `auto` picks it on CUDA only.
Every engine returns the gradient of the mean task loss, summed in a fixed order, so a run
is reproducible (bitwise, for a fixed engine, worker count and chunk size). Under torchrun, each
rank runs its block of the meta-batch with one of these engines, wrapped in
`fastadapt.distributed.DistributedEngine`, which combines the ranks' gradients.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

import torch

from .data.episode import Episode
from .errors import FastAdaptError
from .learners.base import Learner

Metrics = list[dict[str, float]]
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_POLL_S = 1.0  # how often an idle worker checks that its parent lives (non-Linux fallback)


def _accumulate_shard(learner: Learner, tasks: Sequence[Episode], scale: float) -> Metrics:
    metrics = []
    for task in tasks:
        loss, task_metrics = learner.task_loss(task)
        (loss * scale).backward()
        metrics.append(task_metrics)
    return metrics


class SerialEngine:
    name = "serial"

    def meta_gradient(
        self,
        learner: Learner,
        tasks: Sequence[Episode],
        progress: tuple[int, int] | None = None,
        total: int | None = None,
    ) -> Metrics:
        """Fill `.grad` of the learner's parameters with the gradient of the mean task loss.
        `progress` = (step, total steps) is handed to `learner.on_step` first. `total`: the
        meta-batch size to divide by when `tasks` is one rank's share of it (default len(tasks))."""
        if progress is not None:
            learner.on_step(*progress)
        return _accumulate_shard(learner, tasks, 1.0 / (total or len(tasks)))

    def shard(self, meta_batch: int) -> range:
        """The task indices of a meta-batch this process runs: all of them (see DistributedEngine)."""
        return range(meta_batch)

    def close(self) -> None:
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this worker when the trainer dies, however it dies (a
    worker blocked on a pipe or mid-shard would otherwise outlive it). Elsewhere the worker
    loop polls its parent's PID instead."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _worker(conn, learner: Learner, grad_buffers: list[torch.Tensor], parent_pid: int, foreign: list) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C (or a SIGTERM to the process group) reaches the workers too: the parent handles it
    # (one line, then close() ends the workers), so workers ignore both. Dying at once would
    # break the parent's transfer of the next shard mid-way (a traceback, not one line); a
    # worker whose parent is gone is killed by PDEATHSIG anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for other in foreign:  # pipe ends of the parent: held here, they would hide its death (no EOF)
        other.close()
    torch.set_num_threads(1)
    params = [p for p in learner.parameters() if p.requires_grad]
    while True:
        try:
            while not conn.poll(_PARENT_POLL_S):
                if os.getppid() != parent_pid:
                    return
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
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
            raise FastAdaptError(
                "engine 'fork' needs a stateless learner (no BatchNorm running "
                "averages); set train.engine=serial or use bn: transductive"
            )
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
            foreign = [parent_end] + [conn for _, conn, _ in self.children]
            process = ctx.Process(target=_worker, args=(child_end, learner, buffers, os.getpid(), foreign), daemon=True)
            process.start()
            child_end.close()
            self.children.append((process, parent_end, buffers))
        self.learner = learner

    shard = SerialEngine.shard

    def meta_gradient(
        self,
        learner: Learner,
        tasks: Sequence[Episode],
        progress: tuple[int, int] | None = None,
        total: int | None = None,
    ) -> Metrics:
        if learner is not self.learner:
            raise ValueError("this ForkEngine was built for another learner")
        scale = 1.0 / (total or len(tasks))
        shards = [list(tasks[i :: self.workers]) for i in range(self.workers)]
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
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                process.join(timeout=1)
                raise FastAdaptError(
                    f"a fork-engine worker died (exit code {process.exitcode}; -9 is often "
                    f"the kernel killing it for memory); set fewer train.workers or "
                    f"train.engine=serial, and re-run to resume"
                ) from None
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
            ordered[w :: self.workers] = shard
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


def stack_tasks(tasks: Sequence[Episode]) -> tuple[torch.Tensor, ...]:
    """(support_x, support_y, query_x, query_y), each with a leading task dimension."""
    fields = ("support_x", "support_y", "query_x", "query_y")
    shapes = {tuple(tuple(getattr(t, f).shape) for f in fields) for t in tasks}
    if len(shapes) != 1:
        raise FastAdaptError(
            "engine 'vmap' needs episodes of equal shapes within a meta-batch (same ways, "
            "shots and queries); set train.engine=serial for ragged tasks"
        )
    return tuple(torch.stack([getattr(t, f) for t in tasks]) for f in fields)


class VmapEngine:
    """The tasks of a meta-batch as one vmapped computation, `chunk_size` tasks at a time.

    Each chunk's loss is backpropagated before the next chunk runs, so memory holds one chunk's
    graph (chunk_size = 0: the whole meta-batch at once, the fastest on a large GPU). Metrics are
    per-task losses only: `batched_task_loss` returns no predictions, so no training accuracy.
    `compile`: torch.compile the batched loss; when compiling or running it (forward or backward)
    fails, e.g. a backend that cannot differentiate the inner gradient's graph, the chunk is
    rolled back and the engine warns once and runs eagerly from then on.
    """

    name = "vmap"

    def __init__(self, learner: Learner, chunk_size: int = 0, compile: bool = False):
        if not callable(getattr(learner, "batched_task_loss", None)):
            raise FastAdaptError(
                f"engine 'vmap' needs a learner with batched_task_loss (the MAML family); "
                f"{type(learner).__name__} has none; set train.engine=serial or auto"
            )
        if not learner.stateless:
            raise FastAdaptError(
                "engine 'vmap' needs a stateless learner (no BatchNorm running averages); "
                "set model.backbone_args.bn=transductive or train.engine=serial"
            )
        if chunk_size < 0:
            raise FastAdaptError(f"train.chunk_size must be >= 0 (0 = the whole meta-batch), got {chunk_size}")
        self.chunk_size = chunk_size
        self.learner = learner
        self.compiled_loss = torch.compile(learner.batched_task_loss) if compile else None

    def _chunk(self, loss_fn: Callable, tensors: tuple[torch.Tensor, ...], total: int) -> torch.Tensor:
        losses = loss_fn(*tensors)
        (losses.sum() / total).backward()
        return losses.detach()

    def _compiled_chunk(self, tensors: tuple[torch.Tensor, ...], total: int) -> torch.Tensor:
        params = [p for p in self.learner.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.clone() for p in params]
        try:
            return self._chunk(self.compiled_loss, tensors, total)
        except FastAdaptError:
            raise  # the learner's configuration error: eager would raise it too
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
            for p, grad in zip(params, saved):
                p.grad = grad  # undo what a failed backward may have accumulated
            reason = " ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:2])[:300]
            warnings.warn(
                f"train.compile: torch.compile failed on batched_task_loss ({type(exc).__name__}: "
                f"{reason}); running it eagerly. Set train.compile=false to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.compiled_loss = None
            return self._chunk(self.learner.batched_task_loss, tensors, total)

    shard = SerialEngine.shard

    def meta_gradient(
        self,
        learner: Learner,
        tasks: Sequence[Episode],
        progress: tuple[int, int] | None = None,
        total: int | None = None,
    ) -> Metrics:
        if learner is not self.learner:
            raise ValueError("this VmapEngine was built for another learner")
        if progress is not None:
            learner.on_step(*progress)
        stacked = stack_tasks(tasks)
        size = self.chunk_size or len(tasks)
        total = total or len(tasks)
        losses = []
        for start in range(0, len(tasks), size):
            chunk = tuple(t[start : start + size] for t in stacked)
            if self.compiled_loss is not None:
                losses.append(self._compiled_chunk(chunk, total))
            else:
                losses.append(self._chunk(learner.batched_task_loss, chunk, total))
        return [{"loss": loss} for loss in torch.cat(losses).tolist()]

    def close(self) -> None:
        pass


def vmap_ready(learner: Learner) -> bool:
    """Whether `batched_task_loss` can run this learner (what the MAML family refuses under vmap:
    BatchNorm running averages, NHWC modules, checkpointed inner loops)."""
    return (
        callable(getattr(learner, "batched_task_loss", None))
        and learner.stateless
        and not getattr(learner, "checkpoint_inner", False)
        and not any(getattr(m, "channels_last", False) for m in learner.modules())
    )


ENGINES = ("auto", "serial", "fork", "vmap")


def make_engine(
    name: str,
    learner: Learner,
    device: torch.device,
    meta_batch: int,
    workers: int = 0,
    chunk_size: int = 0,
    compile: bool = False,
    context=None,
):
    """Pick the engine. `auto`: on CUDA the vmap engine for learners that can run batched (the
    serial loop for the others); on a multi-core CPU worker processes for stateless learners with
    a meta-batch of at least two tasks; the serial loop everywhere else. `chunk_size` and
    `compile` configure the vmap engine. `context` (fastadapt.distributed.Context), when active:
    the chosen engine runs this rank's block of the meta-batch inside a DistributedEngine, and
    `auto` gives a rank's fork workers only its share of the machine's cores."""
    if name not in ENGINES:
        raise FastAdaptError(f"unknown engine {name!r} (train.engine); choose one of {ENGINES}")
    if context is not None and context.active:
        from .distributed import DistributedEngine, block

        if meta_batch >= context.world_size:  # else DistributedEngine refuses it in one line
            share = len(block(context.rank, context.world_size, meta_batch))
            cores = max(1, len(os.sched_getaffinity(0)) // context.local_world_size)
            local = make_engine(name, learner, device, share, workers or min(cores, share), chunk_size, compile)
        else:
            local = SerialEngine()
        return DistributedEngine(local, learner, context, meta_batch)
    workers = workers or min(len(os.sched_getaffinity(0)), meta_batch)
    if name == "auto":
        if device.type == "cuda":
            name = "vmap" if meta_batch >= 2 and vmap_ready(learner) else "serial"
        else:
            use_fork = device.type == "cpu" and learner.stateless and meta_batch >= 2 and workers >= 2
            name = "fork" if use_fork else "serial"
    if compile and name != "vmap":
        warnings.warn(
            f"train.compile applies to the vmap engine only; engine {name!r} runs eagerly", RuntimeWarning, stacklevel=2
        )
    if name == "vmap":
        return VmapEngine(learner, chunk_size, compile)
    if name == "fork":
        return ForkEngine(learner, max(1, min(workers, meta_batch)))
    return SerialEngine()
