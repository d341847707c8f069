"""Meta-training speed and memory of the MAML family: fastadapt against `higher` and `torchopt`,
measured in one run.

Conv-4 (64 channels, transductive BN), 28x28 Omniglot-shaped 5-way 1-shot episodes with 15
queries per class (random tensors), inner lr 0.4, Adam outer step. Algorithms: second-order MAML,
FOMAML, ANIL (head-only inner loop, second order) and Meta-SGD (learned per-entry inner lr), over
a grid of meta-batch sizes and inner-step counts. Implementations of each configuration:
- `fastadapt-auto`: the trainer's engine choice (`fork` on a multi-core CPU, `vmap` on CUDA) and
  layout (NHWC on CPU); `fastadapt-serial`: one task after another; `fastadapt-serial-ckpt`:
  the serial loop with `checkpoint_inner` (second order, > 1 inner step only);
  `fastadapt-vmap`: the vmap engine (for GPU machines; NCHW, as vmap requires).
- `higher`: `higher.innerloop_ctx`, one task at a time (FOMAML: `track_higher_grads=False` and the
  query gradient added to the initial weights; Meta-SGD: one param group per tensor, lr override).
- `torchopt`: `torchopt.MetaSGD` with extract/recover_state_dict as in torchopt's MAML example
  (MAML, ANIL); its functional API (`torchopt.sgd` + `apply_updates`) for FOMAML and Meta-SGD.
Peers run PyTorch's default NCHW layout on the same Conv-4 module and tasks.

Each measurement runs in a fresh forked child; implementations alternate over `--rounds` and
the median is reported. Speed: `--steps` timed meta-batches after a warm-up step. Memory (CPU):
a separate child per (algorithm, inner steps, implementation) with glibc's mmap threshold fixed,
so resident memory tracks live tensors, reports the peak RSS growth (VmHWM, summed over the child
and its engine workers) of one step after a warm-up (see benchmarks/README.md). Prints one JSON
line per (configuration, implementation), with `speed_vs_higher` and `memory_vs_higher`;
`--out FILE` also appends them to FILE.
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
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from fastadapt.data.episode import Episode  # noqa: E402
from fastadapt.engine import make_engine  # noqa: E402
from fastadapt.learners.optimization.anil import ANIL  # noqa: E402
from fastadapt.learners.optimization.maml import FOMAML, MAML  # noqa: E402
from fastadapt.learners.optimization.metasgd import MetaSGD  # noqa: E402
from fastadapt.models.backbones import Conv4  # noqa: E402

LEARNERS = {"maml": MAML, "fomaml": FOMAML, "anil": ANIL, "metasgd": MetaSGD}
IMPLS = ("fastadapt-auto", "fastadapt-serial", "fastadapt-serial-ckpt", "fastadapt-vmap", "higher", "torchopt")
WARMUP_TASKS = 2  # warm-up step (allocator, oneDNN primitive cache) on a small meta-batch, not timed


def make_tasks(n, ways, shots, queries, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Episode(
            torch.rand(ways * shots, 1, size, size, generator=g),
            torch.arange(ways).repeat_interleave(shots),
            torch.rand(ways * queries, 1, size, size, generator=g),
            torch.arange(ways).repeat_interleave(queries),
            ways=ways,
            shots=shots,
        ).to(device)
        for _ in range(n)
    ]


# -- fastadapt ------------------------------------------------------------------------------


def fastadapt_step(args, cfg, impl):
    engine_name = {"fastadapt-auto": "auto", "fastadapt-vmap": "vmap"}.get(impl, "serial")
    device = torch.device(args.device)
    channels_last = device.type == "cpu" and engine_name != "vmap"  # the trainer's default; vmap needs NCHW
    torch.manual_seed(0)
    backbone = Conv4(out_features=args.ways, bn="transductive", channels_last=channels_last)
    learner = LEARNERS[cfg["algo"]](
        backbone,
        inner_steps=cfg["inner_steps"],
        inner_lr=args.inner_lr,
        checkpoint_inner=impl == "fastadapt-serial-ckpt",
    ).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    engine = make_engine(
        engine_name, learner, device, cfg["meta_batch"], chunk_size=args.chunk_size, compile=args.compile
    )

    def step(tasks):
        optimizer.zero_grad(set_to_none=True)
        engine.meta_gradient(learner, tasks)
        optimizer.step()

    workers = [process.pid for process, _, _ in getattr(engine, "children", [])]
    return step, workers, engine


def peer_model(args, algo: str, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(frozen-in-the-inner-loop body, adapted model) for the peers, seeded like fastadapt's:
    ANIL adapts a linear head on Conv-4 features, the others the whole Conv-4 (NCHW)."""
    torch.manual_seed(0)
    if algo == "anil":
        return Conv4(bn="transductive").to(device), nn.Linear(64, args.ways).to(device)
    return nn.Identity(), Conv4(out_features=args.ways, bn="transductive").to(device)


# -- higher ---------------------------------------------------------------------------------


def higher_step(args, cfg, impl):
    import higher

    device = torch.device(args.device)
    algo, steps, lr = cfg["algo"], cfg["inner_steps"], args.inner_lr
    body, model = peer_model(args, algo, device)
    params = list(model.parameters())
    lrs = [nn.Parameter(torch.full_like(p, lr)) for p in params] if algo == "metasgd" else []
    optimizer = torch.optim.Adam([*body.parameters(), *params, *lrs], 1e-3)
    # Meta-SGD: one param group per tensor, so a per-tensor (elementwise) lr can override each.
    inner = torch.optim.SGD([{"params": [p]} for p in params] if lrs else params, lr=lr)
    override = {"lr": lrs} if lrs else None
    first_order = algo == "fomaml"

    def step(tasks):
        optimizer.zero_grad(set_to_none=True)
        for t in tasks:
            sx, qx = body(t.support_x), body(t.query_x)
            with higher.innerloop_ctx(
                model, inner, copy_initial_weights=False, track_higher_grads=not first_order, override=override
            ) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(sx), t.support_y))
                loss = F.cross_entropy(fmodel(qx), t.query_y) / len(tasks)
                if first_order:  # the query gradient at the adapted weights, added to the initial ones
                    for p, g in zip(params, torch.autograd.grad(loss, fmodel.parameters())):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    loss.backward()
        optimizer.step()

    return step, [], None


# -- torchopt -------------------------------------------------------------------------------


def torchopt_step(args, cfg, impl):
    import torchopt

    device = torch.device(args.device)
    algo, steps, lr = cfg["algo"], cfg["inner_steps"], args.inner_lr
    body, model = peer_model(args, algo, device)
    names = [n for n, _ in model.named_parameters()]
    lrs = [nn.Parameter(torch.full_like(p, lr)) for p in model.parameters()] if algo == "metasgd" else []
    optimizer = torch.optim.Adam([*body.parameters(), *model.parameters(), *lrs], 1e-3)

    if algo in ("maml", "anil"):  # the object-oriented API of torchopt's MAML example
        inner = torchopt.MetaSGD(model, lr=lr)

        def step(tasks):
            optimizer.zero_grad(set_to_none=True)
            net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
            opt_state = torchopt.extract_state_dict(inner, by="reference")
            for t in tasks:
                sx, qx = body(t.support_x), body(t.query_x)
                for _ in range(steps):
                    inner.step(F.cross_entropy(model(sx), t.support_y))
                (F.cross_entropy(model(qx), t.query_y) / len(tasks)).backward()
                torchopt.recover_state_dict(model, net_state)
                torchopt.recover_state_dict(inner, opt_state)
            optimizer.step()

        return step, [], None

    sgd = torchopt.sgd(lr)  # the functional API: FOMAML (constant inner gradients), Meta-SGD

    def step(tasks):
        optimizer.zero_grad(set_to_none=True)
        for t in tasks:
            params = tuple(model.parameters())
            state = sgd.init(params)
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, dict(zip(names, params)), (t.support_x,)), t.support_y)
                grads = torch.autograd.grad(loss, params, create_graph=algo == "metasgd")
                if lrs:  # Meta-SGD: the update is -alpha * g, elementwise
                    updates = tuple(-a * g for a, g in zip(lrs, grads))
                else:
                    updates, state = sgd.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            loss = F.cross_entropy(functional_call(model, dict(zip(names, params)), (t.query_x,)), t.query_y)
            (loss / len(tasks)).backward()
        optimizer.step()

    return step, [], None


# -- measurement ----------------------------------------------------------------------------


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fixed_mmap_threshold() -> None:
    """Make glibc return every block over 64 KiB to the OS when it is freed (M_MMAP_THRESHOLD;
    fixing it turns off its dynamic growth), so resident memory tracks live tensors instead of
    what the allocator kept from earlier steps. Halves the speed: memory runs are not timed."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)


def _child(args, cfg, impl, mode, conn):
    """mode "time": median seconds of `--steps` meta-batches (CUDA: also the allocator's peak).
    mode "memory" (CPU): peak resident memory of one meta-batch step over the resident memory
    after a warm-up step (code pages, parameters, optimiser state), summed over the process and
    its engine workers."""
    try:
        torch.set_num_threads(args.threads)
        device = torch.device(args.device)
        if mode == "memory":
            _fixed_mmap_threshold()  # before the engine forks its workers: they inherit it
        build = fastadapt_step if impl.startswith("fastadapt") else higher_step if impl == "higher" else torchopt_step
        tasks = make_tasks(cfg["meta_batch"], args.ways, args.shots, args.queries, args.size, device)
        step, workers, engine = build(args, cfg, impl)
        step(tasks[:WARMUP_TASKS])  # allocator, oneDNN primitive cache, code pages: not measured
        _synchronize(device)
        result = {"engine": getattr(engine, "name", impl)}
        if mode == "memory":
            pids = [os.getpid(), *workers]
            base = sum(_status_mb(pid, "VmRSS") for pid in pids)
            for pid in pids:
                _reset_peak(pid)
            step(tasks)
            result["peak_mb"] = max(sum(_status_mb(pid, "VmHWM") for pid in pids) - base, 0.0)
        else:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.steps):
                started = time.perf_counter()
                step(tasks)
                _synchronize(device)
                times.append(time.perf_counter() - started)
            result["seconds"] = statistics.median(times)
            if device.type == "cuda":
                result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if engine is not None:
            engine.close()
        conn.send(result)
    except Exception as exc:  # noqa: BLE001 - report, keep the grid going
        conn.send({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


def measure(args, cfg, impl, mode="time"):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(args, cfg, impl, mode, child))
    process.start()
    result = parent.recv()
    process.join()
    return result


def summarize(cfg, impl, timings, memories=None, memory_meta_batch=None) -> dict:
    """One JSON row: median tasks/s and peak MB over the rounds (or the first error)."""
    row = {"benchmark": "maml_speed", **cfg, "impl": impl}
    ok = [r for r in timings if "error" not in r]
    if not ok:
        return {**row, "error": timings[0]["error"]}
    row.update(
        engine=ok[0]["engine"], tasks_per_s=round(cfg["meta_batch"] / statistics.median(r["seconds"] for r in ok), 2)
    )
    if memories is not None:
        fine = [r for r in memories if "error" not in r]
        if fine:
            row.update(
                peak_mb=round(statistics.median(r["peak_mb"] for r in fine), 1), memory_meta_batch=memory_meta_batch
            )
    elif "peak_mb" in ok[0]:
        row["peak_mb"] = round(statistics.median(r["peak_mb"] for r in ok), 1)  # CUDA allocator peak
    return row


def impls_for(cfg, requested):
    """`fastadapt-serial-ckpt` only where checkpointing changes anything (second order, > 1 step)."""
    checkpointable = cfg["algo"] != "fomaml" and cfg["inner_steps"] > 1
    return [i for i in requested if i != "fastadapt-serial-ckpt" or checkpointable]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="maml,fomaml,anil,metasgd")
    parser.add_argument("--meta-batches", default="4,16,32")
    parser.add_argument("--inner-steps", default="1,5")
    parser.add_argument(
        "--impls",
        default="fastadapt-auto,fastadapt-serial,fastadapt-serial-ckpt,higher,torchopt",
        help=f"comma-separated, from {','.join(IMPLS)}",
    )
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=1, help="timed meta-batches per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=0, help="vmap engine: tasks per call (0 = all)")
    parser.add_argument("--compile", action="store_true", help="vmap engine: torch.compile the batched loss")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args()
    unknown = set(args.impls.split(",")) - set(IMPLS) | set(args.algos.split(",")) - set(LEARNERS)
    if unknown:
        parser.error(f"unknown implementation or algorithm: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    meta_batches = [int(b) for b in args.meta_batches.split(",")]
    for algo in args.algos.split(","):
        for inner_steps in map(int, args.inner_steps.split(",")):
            impls = impls_for({"algo": algo, "inner_steps": inner_steps}, args.impls.split(","))
            # CPU memory: every implementation runs one task at a time per process, so a step's
            # peak does not grow with the meta-batch; measured once, at the smallest one (>= 2).
            memory, memory_cfg = {}, {"meta_batch": None}
            if args.device == "cpu":
                memory_cfg = {"algo": algo, "inner_steps": inner_steps, "meta_batch": max(2, min(meta_batches))}
                for impl in impls:
                    memory[impl] = [measure(args, memory_cfg, impl, "memory") for _ in range(args.rounds)]
            for meta_batch in meta_batches:
                cfg = {"algo": algo, "inner_steps": inner_steps, "meta_batch": meta_batch}
                runs = {impl: [] for impl in impls}
                for _ in range(args.rounds):
                    for impl in impls:
                        runs[impl].append(measure(args, cfg, impl))
                rows = {
                    impl: summarize(cfg, impl, runs[impl], memory.get(impl), memory_cfg["meta_batch"]) for impl in impls
                }
                peer = rows.get("higher", {})
                for row in rows.values():
                    if "tasks_per_s" in row and "tasks_per_s" in peer:
                        row["speed_vs_higher"] = round(row["tasks_per_s"] / peer["tasks_per_s"], 3)
                    if row.get("peak_mb") and peer.get("peak_mb"):
                        row["memory_vs_higher"] = round(row["peak_mb"] / peer["peak_mb"], 3)
                    row.update(
                        ways=args.ways,
                        shots=args.shots,
                        queries=args.queries,
                        image_size=args.size,
                        device=args.device,
                        threads=args.threads,
                        cores=len(os.sched_getaffinity(0)),
                        torch=torch.__version__,
                        rounds=args.rounds,
                        steps_per_round=args.steps,
                    )
                    line = json.dumps(row)
                    print(line, flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(line + "\n")
    print(f"# grid done in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
