"""Meta-training on several processes or machines with torch.distributed (launched by torchrun).

`torchrun --nproc_per_node=N -m fastadapt train PRESET` (or `fastadapt train --nproc N PRESET`)
runs one trainer per rank. The rank, world size and local rank come from torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), as in nanoGPT; the process
group uses gloo on CPU and NCCL on CUDA (one GPU per local rank).

The meta-batch: a task is a pure function of its index (step * meta_batch + i), so rank r draws
only its contiguous block of indices, [r*T//N, (r+1)*T//N) for T tasks on N ranks, and runs it
with the ordinary engines (serial loop, fork workers, vmap), scaled by 1/T so that the blocks'
gradients add up to the gradient of the mean task loss. No DDP wrapper: as in cleanrl, the
gradients travel as one flattened vector per rank.

The reduction (why a run does not depend on N): each rank's block gradient is all-gathered and
every rank adds the N vectors in rank order, which, with contiguous blocks, is task order. Every
rank therefore holds bitwise the same gradient (the ranks' weights never drift apart), a 1-rank
run's weights equal those of the same engine without torch.distributed bitwise (its BatchNorm
running averages to rounding, see below), and N ranks differ from 1 only by
where the sum of the T task gradients is parenthesised: float rounding (~1e-7 relative per step),
not a different algorithm. (An all_reduce would add in an order chosen by the backend; gathering
per-task gradients would make runs bitwise N-independent but costs T/N x the memory.)

BatchNorm running averages (inductive BN): one forward of a layer with momentum m maps its
running statistic r to (1-m) r + m s (s: the batch statistic, which also normalises the batch in
training mode, so r never affects a forward). Processing a block is therefore an affine map
r -> (1-m)^k r + b, where k is the number of forwards and b is what the block leaves when it
starts from r = 0. Each rank zeroes the running statistics, runs its block, and sends (b, k)
with its gradient; every rank then applies the N maps in rank (= task) order to the statistics
it had before the step. This equals the one-process serial loop up to float rounding and keeps
the statistics identical on every rank. Layers with `momentum=None` (cumulative averages) are
refused: their update is not this affine map.

Files: rank 0 alone takes the run lock and writes config, checkpoints, metrics, plots and the
final evaluation; every rank reads the same checkpoint to resume (on several machines the run
folder must be on a shared file system), and the resumed step and weights are checked to agree.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .data.episode import Episode
from .errors import FastAdaptError

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: How long a rank waits in a collective (e.g. while rank 0 validates or checkpoints) before
#: giving up; torchrun tears the other ranks down sooner when one of them dies.
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job. `active`: a process group is in use (even with one
    rank, so a 1-rank torchrun run takes the same code path as N ranks)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        return self.rank == 0


def launched() -> bool:
    """True inside a torchrun worker (RANK, WORLD_SIZE and LOCAL_RANK are set)."""
    return all(key in os.environ for key in _ENV)


def env_rank() -> int:
    """This process's rank from the environment (0 outside torchrun), before any process group."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _env_int(key: str, default: int | None = None) -> int:
    value = os.environ.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FastAdaptError(
            f"environment variable {key}={value!r} is not an integer; launch with torchrun (see README)"
        ) from None


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group that torchrun's environment describes (idempotent) and return the
    context and this rank's device: `cuda` becomes `cuda:LOCAL_RANK` (NCCL), the CPU uses gloo.
    Outside torchrun: an inactive Context and `device` unchanged."""
    if not launched():
        return Context(), device
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not (0 <= rank < world and 0 <= local_rank < local_world):
        raise FastAdaptError(
            f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world}; launch with torchrun"
        )
    backend = "gloo"
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FastAdaptError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); start at most "
                f"one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
        atexit.register(_shutdown)
    return Context(rank, world, local_rank, local_world, True), device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(context: Context, error: FastAdaptError | None) -> None:
    """A collective: every rank says whether it failed, and if any did, every rank raises the
    first failure (by rank), so no rank waits forever in a later collective. The exception gets
    `shown_by_rank_0 = True` on ranks other than 0: the CLI prints it once, from rank 0."""
    if not context.active:
        if error is not None:
            raise error
        return
    messages: list[str | None] = [None] * context.world_size
    local = None if error is None else str(error)
    # Small strings among the job's own processes; nothing read from disk is unpickled here.
    dist.all_gather_object(messages, local)
    for rank, message in enumerate(messages):
        if message is None:
            continue
        exc = (
            error
            if rank == context.rank and error is not None
            else FastAdaptError(message if rank == 0 else f"rank {rank}: {message}")
        )
        exc.shown_by_rank_0 = not context.is_main
        exc.agreed = True  # every rank raises it: see `settle`
        raise exc from None


def settle(error: BaseException) -> None:
    """After an error that `agree` raised on every rank has been reported (rank 0 prints it): a
    barrier, so that no rank exits first and gets rank 0 stopped by torchrun mid-message."""
    if getattr(error, "agreed", False) and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            dist.barrier()


def agreed(context: Context, fn: Callable[[], T], main_only: bool = False) -> T | None:
    """`fn()` on every rank (on rank 0 only with `main_only`), then `agree` on its FastAdaptError."""
    result, error = None, None
    if context.is_main or not main_only:
        try:
            result = fn()
        except FastAdaptError as exc:
            error = exc
    agree(context, error)
    return result


@contextlib.contextmanager
def held_by_main(context: Context, make: Callable[[], contextlib.AbstractContextManager]):
    """Enter the context manager `make()` (the run lock) on rank 0 only, agreeing on its errors."""
    with contextlib.ExitStack() as stack:
        agreed(context, lambda: stack.enter_context(make()), main_only=True)
        yield


def check_same_start(context: Context, step: int, module: nn.Module) -> None:
    """After a resume: every rank must have resumed the same step (one run folder, shared by
    every machine); rank 0's weights and buffers are then broadcast, so ranks start identical
    even where weight initialisation differs between machines."""
    if not context.active:
        return
    device = next(module.parameters()).device
    steps = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(context.world_size)]
    dist.all_gather(steps, torch.tensor([step], dtype=torch.long, device=device))
    found = [int(s.item()) for s in steps]
    if len(set(found)) != 1:
        odd = next(r for r, s in enumerate(found) if s != found[0])
        raise FastAdaptError(
            f"rank {odd} resumed at step {found[odd]} but rank 0 at step {found[0]}: every rank must read the "
            f"same run folder; put it on a file system shared by all machines (--out)"
        )
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def block(rank: int, world_size: int, meta_batch: int) -> range:
    """The task indices (within a meta-batch of `meta_batch`) that `rank` runs: a contiguous block,
    so rank order is task order; block sizes differ by at most one."""
    return range(rank * meta_batch // world_size, (rank + 1) * meta_batch // world_size)


def running_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that keep running averages; a cumulative average (momentum None) is refused."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        if m.momentum is None:
            raise FastAdaptError(
                "a BatchNorm layer with momentum=None (cumulative averages) cannot be trained on several "
                "processes; give it a momentum, or use model.backbone_args.bn=transductive"
            )
    return norms


class DistributedEngine:
    """Runs this rank's block of every meta-batch with a local engine and combines the ranks'
    gradients, BatchNorm statistics and metrics (see the module docstring for the order).

    `meta_gradient(learner, tasks)` takes this rank's tasks (`shard(meta_batch)` says which) and
    leaves in `.grad` the gradient of the mean loss over all T tasks; it returns all T tasks'
    metrics in task order, identical on every rank. Traffic per step: each rank sends one vector
    of (parameters + 2 x BatchNorm channels) floats and receives N of them.
    """

    def __init__(self, local, learner: nn.Module, context: Context, meta_batch: int):
        if meta_batch < context.world_size:
            raise FastAdaptError(
                f"train.meta_batch ({meta_batch}) must be at least the number of processes "
                f"({context.world_size}): every rank runs at least one task; use fewer processes"
            )
        self.local, self.learner, self.context, self.meta_batch = local, learner, context, meta_batch
        self.name = f"{local.name} on {context.world_size} ranks"
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.norms = running_norms(learner)
        self.sizes = [len(block(r, context.world_size, meta_batch)) for r in range(context.world_size)]

    def shard(self, meta_batch: int) -> range:
        """This rank's task indices within a meta-batch."""
        if meta_batch != self.meta_batch:
            raise ValueError(f"this engine was built for meta-batches of {self.meta_batch}, not {meta_batch}")
        return block(self.context.rank, self.context.world_size, meta_batch)

    def meta_gradient(
        self, learner: nn.Module, tasks: Sequence[Episode], progress: tuple[int, int] | None = None
    ) -> list[dict[str, float]]:
        if learner is not self.learner:
            raise ValueError("this DistributedEngine was built for another learner")
        if len(tasks) != self.sizes[self.context.rank]:
            raise ValueError(
                f"rank {self.context.rank} got {len(tasks)} tasks, its block has {self.sizes[self.context.rank]}"
            )
        before = self._zero_running_stats()
        metrics = self.local.meta_gradient(learner, tasks, progress, total=self.meta_batch)
        parts = self._all_gather(self._pack())
        total = parts[0].clone()
        for part in parts[1:]:  # rank order = task order: the same sum on every rank
            total.add_(part)
        self._unpack(total, parts, before)
        return self._gather_metrics(metrics)

    def close(self) -> None:
        self.local.close()

    # -- packing -------------------------------------------------------------------------------
    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        return self.params[0].dtype, self.params[0].device

    def _zero_running_stats(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The statistics before the step; the layers start the block from zero (b of the map)."""
        before = []
        with torch.no_grad():
            for m in self.norms:
                before.append((m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()))
                m.running_mean.zero_()
                m.running_var.zero_()
                m.num_batches_tracked.zero_()
        return before

    def _pack(self) -> torch.Tensor:
        """[gradients | has-gradient flags | per norm: b_mean, b_var, k]: one vector per rank."""
        dtype, device = self._dtype_device()
        pieces = [p.grad.reshape(-1).to(dtype) if p.grad is not None else p.new_zeros(p.numel()) for p in self.params]
        pieces.append(torch.tensor([float(p.grad is not None) for p in self.params], dtype=dtype, device=device))
        for m in self.norms:
            k = m.num_batches_tracked.to(dtype=dtype, device=device).reshape(1)
            pieces += [m.running_mean.to(dtype), m.running_var.to(dtype), k]
        return torch.cat(pieces)

    def _all_gather(self, flat: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(flat) for _ in range(self.context.world_size)]
        dist.all_gather(parts, flat)
        return parts

    def _unpack(self, total: torch.Tensor, parts: list[torch.Tensor], before) -> None:
        offset = 0
        for p in self.params:
            p.grad = total[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()
        flags = total[offset : offset + len(self.params)]
        for p, flag in zip(self.params, flags.tolist()):
            if flag == 0:  # no task on any rank reached this parameter: None, as in one process
                p.grad = None
        offset += len(self.params)
        with torch.no_grad():
            for m, (mean, var, count) in zip(self.norms, before):
                n = m.num_features
                for part in parts:  # each rank's affine map, in rank (= task) order
                    b_mean, b_var = part[offset : offset + n], part[offset + n : offset + 2 * n]
                    k = int(part[offset + 2 * n].item())
                    factor = (1.0 - m.momentum) ** k
                    mean = mean * factor + b_mean.to(mean.dtype)
                    var = var * factor + b_var.to(var.dtype)
                    count = count + k
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
                offset += 2 * n + 1

    def _gather_metrics(self, metrics: list[dict[str, float]]) -> list[dict[str, float]]:
        """Every task's metrics, in task order, on every rank (float64 rows; the key list is
        checked by its CRC-32, since every rank runs the same learner)."""
        keys = sorted(metrics[0]) if metrics else []
        if any(sorted(m) != keys for m in metrics):
            raise RuntimeError("a learner returned different metric names for different tasks")
        _, device = self._dtype_device()
        rows = max(self.sizes)
        table = torch.full((rows, len(keys)), float("nan"), dtype=torch.float64, device=device)
        if keys:
            table[: len(metrics)] = torch.tensor([[m[k] for k in keys] for m in metrics], dtype=torch.float64)
        header = torch.tensor([zlib.crc32(",".join(keys).encode()), len(keys)], dtype=torch.float64, device=device)
        parts = self._all_gather(torch.cat([header, table.reshape(-1)]))
        ordered = []
        for rank, part in enumerate(parts):
            if not torch.equal(part[:2], header):
                raise RuntimeError(f"rank {rank} reports other metrics than rank {self.context.rank}")
            values = part[2:].reshape(rows, len(keys))[: self.sizes[rank]].tolist()
            ordered += [dict(zip(keys, row)) for row in values]
        return ordered
