"""Meta-training on several torch.distributed ranks (gloo, CPU) equals training in one process.

Ranks are forked from the test process (each sets torchrun's environment variables and joins a
gloo group), so no rank pays for importing torch again; the kill -9 test goes through the real
launcher, `fastadapt train --nproc 2` (torchrun). Reference runs are the ordinary one-process
trainer: N ranks add the same task gradients with other parentheses (see fastadapt.distributed),
so parameters agree to float rounding, and a 1-rank job equals the one-process run bitwise.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastadapt.checkpoint import save_checkpoint
from fastadapt.config import load_config
from fastadapt.distributed import Context, DistributedEngine, block, running_norms
from fastadapt.errors import FastAdaptError
from fastadapt.trainer import Trainer

SMALL = [
    "train.val_episodes=4",
    "eval.episodes=4",
    "model.backbone_args.hidden=8",
    "train.log_every=1",
    "train.val_every=1000",  # validation at the last step only, so the selected weights are the last
    "train.checkpoint_every=2",
    "train.steps=4",
    "train.engine=serial",
    "train.optimizer=sgd",  # Adam would turn the rounding noise of zero gradients (conv bias before BN) into lr-sized steps
]
#: Second-order MAML with inductive BN (running averages updated by every inner-loop forward),
#: ProtoNets (inductive BN, one forward per task) and Reptile (the surrogate outer step); meta-batch
#: 3 on 2 ranks gives blocks of 1 and 2 tasks.
CONFIGS = {
    "maml-second-order": (
        "maml-omniglot-5w1s",
        "train.meta_batch=3",
        "train.episodes.queries=2",
        "model.backbone_args.bn=inductive",
        "learner.args.first_order=false",
        "learner.args.eval_inner_steps=1",
    ),
    "protonet": ("protonet-omniglot-5w1s", "train.meta_batch=3", "train.episodes.ways=5", "train.episodes.queries=2"),
    "reptile": (
        "reptile-omniglot-5w1s",
        "train.meta_batch=3",
        "train.episodes.shots=2",
        "learner.args.inner_iters=2",
        "learner.args.eval_inner_iters=2",
        "learner.args.inner_optimizer=sgd",  # the inner Adam, too, would amplify zero-gradient rounding noise
    ),
}


@pytest.fixture(scope="module")
def data_root(real_data_root):
    """The real data root, with this session's Omniglot cache built here once, so that forked
    ranks read it instead of decoding the archives side by side."""
    Trainer(_config("protonet"), Path(os.devnull), data_root=real_data_root, quiet=True).suite.check()
    return real_data_root


def _config(name, *extra):
    preset, *overrides = CONFIGS[name]
    return load_config(preset, SMALL + overrides + list(extra))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, job, conn):
    """A forked rank: torchrun's environment, one thread, `job(rank)`'s result sent back."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        conn.send(("ok", job(rank)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which decides
        conn.send(("error", (type(exc).__name__, str(exc), getattr(exc, "shown_by_rank_0", False))))
        traceback.print_exc()
    finally:
        conn.close()
        os._exit(0)  # skip pytest's and torch's exit handlers in the forked child


def run_ranks(world: int, job, timeout: float = 120) -> list:
    """Run `job(rank)` on `world` forked ranks of one gloo group; their results in rank order."""
    ctx, port = mp.get_context("fork"), _free_port()
    pipes, processes = [], []
    for rank in range(world):
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_rank, args=(rank, world, port, job, child))
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    results = []
    for rank, (pipe, process) in enumerate(zip(pipes, processes)):
        assert pipe.poll(timeout), f"rank {rank} did not finish in {timeout} s"
        results.append(pipe.recv())
        process.join(timeout=10)
    return results


def _train(config, run_dir, data_root, **fit):
    """One rank's (or the one process's) run: its result and final weights and buffers (as numpy
    arrays: a forked rank exits before torch's shared-memory tensors could be collected).

    One intra-op thread, as each rank has: the thread count changes how a convolution's sums are
    split, so runs with different counts differ in the last bits (CI has 2 threads by default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config, run_dir, data_root=data_root, quiet=True)
        result = trainer.fit(**fit)
    finally:
        torch.set_num_threads(threads)
    return result, {k: v.detach().numpy().copy() for k, v in trainer.learner.state_dict().items()}


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("train_loss")
    return [float(line.split(",")[column]) for line in lines[1:]]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_equal_one_process(name, data_root, tmp_path):
    config = _config(name)
    _, expected = _train(config, tmp_path / "one", data_root)
    ranks = run_ranks(2, lambda rank: _train(config, tmp_path / "two", data_root))
    assert [status for status, _ in ranks] == ["ok", "ok"], ranks
    (result, weights), (other_result, other_weights) = (payload for _, payload in ranks)
    assert result is not None and other_result is None  # rank 0 evaluates and reports, rank 1 returns None
    assert weights.keys() == expected.keys()
    for key in expected:
        assert np.array_equal(weights[key], other_weights[key]), f"ranks disagree on {key}"  # same sum everywhere
        np.testing.assert_allclose(weights[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
    if name != "reptile":  # BN running averages and counts went through the ranks' affine maps
        assert any(k.endswith("running_var") for k in expected)
        assert any(k.endswith("num_batches_tracked") and expected[k] > 0 for k in expected)
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert len(list((tmp_path / "two" / "checkpoints").glob("step-*.json"))) == 2


def test_one_rank_is_the_one_process_run_bitwise(data_root, tmp_path):
    config = _config("protonet")
    _, expected = _train(config, tmp_path / "one", data_root)
    [(status, (result, weights))] = run_ranks(1, lambda rank: _train(config, tmp_path / "job", data_root))
    assert status == "ok" and result is not None
    statistics = [k for k in expected if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    assert statistics
    for key in expected:  # one rank adds nothing: the gradient, hence every weight, is the same bits
        if key in statistics:  # composed as (1-m)^k r + b rather than k in-place updates: rounding
            np.testing.assert_allclose(weights[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            assert np.array_equal(weights[key], expected[key]), key
    assert (tmp_path / "job" / "metrics.csv").read_text().splitlines()[1:] != []
    assert _losses(tmp_path / "job") == _losses(tmp_path / "one")


def test_interrupted_and_resumed_on_two_ranks_equals_straight_run(data_root, tmp_path):
    config = _config("maml-second-order")
    straight = run_ranks(2, lambda rank: _train(config, tmp_path / "straight", data_root))
    stopped = run_ranks(2, lambda rank: _train(config, tmp_path / "resumed", data_root, stop_after=2))
    assert [payload[0] for _, payload in stopped] == [None, None]
    resumed = run_ranks(2, lambda rank: _train(config, tmp_path / "resumed", data_root))
    for (_, (_, a)), (_, (_, b)) in zip(straight, resumed):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_an_error_on_rank_0_stops_every_rank_with_one_message(data_root, tmp_path):
    """Rank 0 alone checks the run folder; rank 1 must not wait for it forever, nor print it again."""
    Trainer(_config("protonet"), tmp_path / "run", data_root=data_root, quiet=True).fit(stop_after=2)
    other = _config("protonet", "train.lr=0.01")
    ranks = run_ranks(2, lambda rank: _train(other, tmp_path / "run", data_root))
    (status0, (kind0, message0, quiet0)), (status1, (kind1, message1, quiet1)) = ranks
    assert status0 == status1 == "error" and kind0 == kind1 == "FastAdaptError"
    assert "other settings" in message0 and message1 == message0
    assert (quiet0, quiet1) == (False, True)  # the CLI prints it once, from rank 0


def test_rank_1_never_writes_the_run_folder(tmp_path):
    def job(rank):
        from fastadapt.distributed import setup

        setup(torch.device("cpu"))
        try:
            save_checkpoint(tmp_path, 1, nn.Linear(2, 2), {}, "x")
        except RuntimeError as exc:
            return str(exc)
        return None

    assert run_ranks(2, job) == [
        ("ok", None),
        ("ok", "rank 1 tried to write a checkpoint; only rank 0 writes the run folder"),
    ]


def test_blocks_cover_the_meta_batch_in_task_order():
    for world in range(1, 6):
        for meta_batch in range(world, 12):
            blocks = [block(r, world, meta_batch) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(meta_batch))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_bad_settings_are_one_line(tmp_path, capsys):
    from fastadapt.cli import main

    learner = nn.BatchNorm1d(3, momentum=None)
    with pytest.raises(FastAdaptError, match="momentum=None"):
        running_norms(learner)
    with pytest.raises(FastAdaptError, match=r"train.meta_batch \(1\) must be at least the number of processes \(2\)"):
        DistributedEngine(None, learner, Context(0, 2, 0, 2, True), 1)
    args = ["train", "maml-sinusoid-5shot", "--set", "train.meta_batch=2", "--out", str(tmp_path / "r")]
    assert main(args + ["--nproc", "3"]) == 2
    assert "--nproc 3 is more than train.meta_batch (2)" in capsys.readouterr().err
    assert main(args + ["--nproc", "0"]) == 2
    assert "--nproc must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The PID of torchrun rank `rank` below `launcher` (found by its RANK environment variable)."""
    pending = [launcher]
    while pending:
        pid = pending.pop()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
                return pid
            pending += _children(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def test_kill_9_of_one_rank_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    """`fastadapt train --nproc 2` (torchrun) on sinusoid MAML: rank 1 is killed mid-run, the job
    stops, the same command resumes it on two new ranks, and the weights equal a straight run's."""
    settings = ["train.steps=200", "train.meta_batch=4", "train.checkpoint_every=20", "train.val_every=1000"]
    settings += ["train.log_every=20", "eval.episodes=4", "train.val_episodes=4"]
    config = load_config("maml-sinusoid-5shot", settings)
    [(_, (_, straight)), _] = run_ranks(2, lambda rank: _train(config, tmp_path / "straight", None))
    args = [sys.executable, "-m", "fastadapt", "train", "maml-sinusoid-5shot", "--nproc", "2", "--quiet"]
    for item in settings:
        args += ["--set", item]
    args += ["--out", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pointer = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and launcher.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 40:
            break
        time.sleep(0.01)
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, stderr
    assert not (tmp_path / "run" / "eval.json").exists(), "the run finished before it could be killed"
    # Two new ranks resume from rank 0's files (forked here: a second launch would only add imports).
    resumed = run_ranks(2, lambda rank: _train(config, tmp_path / "run", None))
    assert [status for status, _ in resumed] == ["ok", "ok"], resumed
    for _, (_, weights) in resumed:
        assert all(np.array_equal(weights[k], straight[k]) for k in straight)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["train_steps"] == 200
