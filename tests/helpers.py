"""Tiny synthetic episodes and run checks shared by several test files (importable: pytest puts
tests/ on sys.path)."""

import math

import torch

from fastadapt.data.episode import Episode


def image_task(seed, ways=3, shots=2, queries=2, size=16):
    """A random `ways`-way image episode, a pure function of `seed`."""
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(ways * shots, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(shots),
        torch.rand(ways * queries, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(queries),
        ways=ways,
        shots=shots,
    )


#: A few-second MAML-TRPO run of the 2D-navigation preset (overrides).
RL_TINY = [
    "train.steps=4",
    "train.meta_batch=2",
    "train.episodes.shots=3",
    "train.episodes.queries=3",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "eval.episodes=3",
    "eval.shots=3",
    "eval.queries=3",
    "data.args.horizon=8",
    "model.backbone_args.hidden=[8]",
    "learner.args.cg_iters=3",
]


def best_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "best.safetensors"))


def straight_and_resumed(config, tmp_path) -> tuple[dict, dict]:
    """The run uninterrupted (tmp_path/a) and stopped after 2 steps, then resumed (tmp_path/b): the
    same weights bitwise and the same result. Returns a's result and weights."""
    from fastadapt.trainer import Trainer

    straight = Trainer(config, tmp_path / "a", quiet=True).fit()
    assert Trainer(config, tmp_path / "b", quiet=True).fit(stop_after=2) is None
    resumed = Trainer(config, tmp_path / "b", quiet=True).fit()
    a, b = best_weights(tmp_path / "a"), best_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["return"] == resumed["return"] and math.isfinite(straight["return"])
    return straight, a
