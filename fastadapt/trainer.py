"""The one trainer for every learner: meta-batches in, checkpoints and results out.

Exact resume: a task is a pure function of its index (step * meta_batch + i), and the
checkpoint holds everything else that changes during training (weights, optimiser, scheduler,
RNG states, the partial logging window, history, best score). A run resumed from any checkpoint
ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, load_weights, save_checkpoint, settings_fingerprint
from .config import Config, config_from_dict
from .config_checks import check_config, check_ranks
from .data import build_suite
from .distributed import agreed, check_same_start, held_by_main
from .distributed import setup as setup_distributed
from .divergence import NEW_OUT, DivergedError, check_step, require_finite_weights, save_finite_weights
from .engine import make_engine
from .errors import FastAdaptError
from .evaluate import better, evaluate, higher_is_better
from .learners import build_learner
from .progress import Progress
from .report import plot_learning_curve, write_metrics_csv
from .runlock import read_run_config, release_unused_claim, remove_stale_temp_files, run_lock, write_or_check_settings
from .scoring import read_model_info, score_run
from .tblog import TensorBoardLog
from .utils import atomic_write_text, resolve_device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.steps), eta_min=cfg.lr_min)
    if cfg.lr_schedule == "linear":  # to zero at the last step (Reptile's annealed meta step size)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, cfg.steps)))
    raise FastAdaptError(f"unknown train.lr_schedule {cfg.lr_schedule!r}; choose constant, step, cosine or linear")


def _optimizer(params, cfg) -> torch.optim.Optimizer:
    # A learner with nothing to meta-train (ProtoNet or logistic regression on frozen embeddings)
    # gets an optimiser over an empty group, so its state and schedule save and load as any other.
    params = list(params) or [{"params": []}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    raise FastAdaptError(f"unknown train.optimizer {cfg.optimizer!r}; choose adam or sgd")


class Trainer:
    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        data_root: str | Path | None = None,
        quiet: bool = False,
        download: bool = False,
    ):
        self.config, self.run_dir, self.data_root, self.quiet = config, Path(run_dir), data_root, quiet
        check_config(config)
        _seed_everything(config.seed)
        # Under torchrun: join the process group (cuda becomes cuda:LOCAL_RANK); only rank 0 prints
        # and writes. Errors that any rank meets before training are raised on every rank (`agreed`).
        self.dist, self.device = setup_distributed(resolve_device(config.train.device))
        self.quiet = quiet or not self.dist.is_main
        self.suite = agreed(self.dist, lambda: build_suite(config, data_root, download))
        channels_last = config.model.channels_last
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        # A trained run records its model's input shape, so loading it (eval on other data,
        # predict) needs neither its training data nor a pass over it.
        shape = agreed(  # the suite's shape loads the data: its errors too are raised on every rank
            self.dist,
            lambda: (
                read_model_info(self.run_dir)
                or {"input_shape": self.suite.input_shape, "num_train_classes": self.suite.num_train_classes}
            ),
        )
        self.model_info = {"input_shape": list(shape["input_shape"]), "num_train_classes": shape["num_train_classes"]}
        self.learner = build_learner(config, tuple(shape["input_shape"]), channels_last, shape["num_train_classes"]).to(
            self.device
        )
        select = config.train.select_metric  # a name check_config could not tie to this learner
        if select is not None and select != self.learner.primary_metric:
            if select not in type(self.learner).selectable_metrics(getattr(self.learner, "args", None)):
                raise FastAdaptError(
                    f"train.select_metric: {select!r} is not a validation metric of learner "
                    f"{config.learner.name}, whose main metric is {self.learner.primary_metric}; give that "
                    f"or null"
                )
        self.optimizer = _optimizer(self.learner.parameters(), config.train)
        self.scheduler = _scheduler(self.optimizer, config.train)
        self.state = {
            "step": 0,
            "history": [],
            "best": None,
            "best_step": None,
            "elapsed": 0.0,
            "window": {"n": 0, "loss": 0.0, "metric": 0.0},
        }

    # -- run folder -------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Write config.yaml, or check that the folder's run has these settings (labels may differ)."""
        write_or_check_settings(self.run_dir, self.config.to_dict())

    def _claim_run_dir(self) -> None:
        self._prepare_run_dir()
        atomic_write_text(self.run_dir / "model.json", json.dumps(self.model_info))

    @property
    def fingerprint(self) -> str:
        """What a checkpoint or best.safetensors must record to be this run's (checkpoint.py)."""
        return settings_fingerprint(self.config)

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir, self.learner, self.fingerprint)
        if state is None:
            return
        try:  # verified files, but a hand-made one could still hold the wrong structure
            self.optimizer.load_state_dict(state.pop("optimizer"))
            self.scheduler.load_state_dict(state.pop("scheduler"))
            rng = state.pop("rng")
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise FastAdaptError(
                f"the checkpoint in {self.run_dir / 'checkpoints'} holds unusable trainer state "
                f"({type(exc).__name__}); delete that folder to restart the run from step 0"
            ) from None
        self.state = state
        self._log(f"resumed {self.run_dir} at step {state['step']}")

    def _checkpoint(self) -> None:
        if not self.dist.is_main:  # rank 0 alone writes; every rank resumes from its files
            return
        state = dict(
            self.state,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng={"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        )
        require_finite_weights(self.learner, self.run_dir / "checkpoints")  # never over a good one
        save_checkpoint(self.run_dir, self.state["step"], self.learner, state, self.fingerprint)

    def _log(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        stop_after: int | None = None,
        on_validation: Callable[[int, float], None] | None = None,
        test: bool = True,
    ) -> dict | None:
        """Train to `train.steps` (resuming if the run folder has a checkpoint), then evaluate
        the selected checkpoint on the fixed test episodes. `stop_after` ends early, right
        after the checkpoint at that step (an interruption, for tests). The run folder is
        locked throughout: a second process on it stops with a one-line error.

        `on_validation(step, score)` is called after each validation (score: the primary metric
        on the fixed validation episodes, once the row is in metrics.csv and any new best weights
        are saved); an exception it raises stops training there (hyper-parameter search prunes
        a trial this way, fastadapt.tune). `test=False` ends without touching the test episodes
        and returns None (tuning trials: the test set is used once, by the run from the best trial).
        Under torchrun (fastadapt.distributed), rank 0 writes the run folder and returns the
        result; the other ranks train alongside it and return None."""
        fresh = self.dist.is_main and not (self.run_dir / "config.yaml").exists()
        with held_by_main(self.dist, lambda: run_lock(self.run_dir)):  # torchrun: rank 0 holds it
            if self.dist.is_main:
                remove_stale_temp_files(self.run_dir)  # left by a killed run; the lock keeps live writers out
            try:
                return self._fit(stop_after, on_validation, test)
            except DivergedError as exc:  # at the first steps, nothing was written to look at
                if fresh and release_unused_claim(self.run_dir):
                    cleared = "then re-run (the run folder held nothing yet and was cleared)"
                    raise DivergedError(str(exc).replace(NEW_OUT, cleared)) from None
                raise
            except BaseException:
                if fresh:  # else the corrected command would meet "a run with other settings"
                    release_unused_claim(self.run_dir)
                raise

    def _nothing_to_train(self, test: bool) -> dict | None:
        """A learner without trainable parameters (a frozen encoder's ProtoNet, logistic regression
        on the support set), or `train.steps: 0` (a pretrained encoder fine-tuned per task, without
        meta-training), skips meta-training: zero steps, its initial state saved as the selected
        weights, then the test episodes as for any run."""
        why = "train.steps is 0" if self.config.train.steps == 0 else "it has no trainable parameters"
        self._log(f"{self.config.name}: {type(self.learner).__name__} is not meta-trained ({why})")
        if not self.dist.is_main:
            return None
        save_finite_weights(
            self.run_dir / "best.safetensors", self.learner, {"step": 0, "fingerprint": self.fingerprint}
        )
        self.state["best_step"] = 0
        return evaluate_run(self.run_dir, data_root=self.data_root, quiet=self.quiet, trainer=self) if test else None

    def _fit(self, stop_after: int | None, on_validation=None, test: bool = True) -> dict | None:
        cfg = self.config.train
        agreed(self.dist, lambda: check_ranks(self.config, self.dist.world_size))  # printed once, from rank 0
        agreed(self.dist, self.suite.check)  # data errors come before the run folder is claimed with config.yaml
        agreed(self.dist, self._claim_run_dir, main_only=True)
        agreed(self.dist, self._resume)  # every rank reads the same checkpoint
        check_same_start(self.dist, self.state["step"], self.learner)
        if cfg.steps == 0 or not any(p.requires_grad for p in self.learner.parameters()):
            return self._nothing_to_train(test)
        val_set = None
        if self.config.data.val_split and self.dist.is_main:  # torchrun: rank 0 validates, the others wait
            e = self.config.eval
            val_set = self.suite.fixed_set(
                self.config.data.val_split, e.ways, e.shots, e.queries, cfg.val_episodes, e.seed + 1
            )
        metric = self.learner.primary_metric
        select = cfg.select_metric or metric  # checked by check_config and __init__: one this learner reports
        tensorboard = (
            TensorBoardLog(self.run_dir, self.state["history"], metric, higher_is_better(metric))
            if self.dist.is_main
            else None
        )
        engine = agreed(
            self.dist,
            lambda: make_engine(
                cfg.engine,
                self.learner,
                self.device,
                cfg.meta_batch,
                cfg.workers,
                chunk_size=cfg.chunk_size,
                compile=cfg.compile,
                context=self.dist,
            ),
        )
        self._log(
            f"{self.config.name}: {type(self.learner).__name__} on {self.config.data.dataset}, "
            f"{cfg.steps} steps x {cfg.meta_batch} tasks, engine={engine.name}, device={self.device}"
        )
        started = time.perf_counter() - self.state["elapsed"]
        fix = self.learner.divergence_fix(cfg.lr)  # what a divergence message tells the user to change
        self.learner.train()
        try:
            with Progress(cfg.steps, self.state["step"], enabled=not self.quiet) as progress:
                while self.state["step"] < cfg.steps:
                    step = self.state["step"]
                    tasks = [
                        self.suite.train_task(step * cfg.meta_batch + i).to(self.device)
                        for i in engine.shard(cfg.meta_batch)  # torchrun: this rank's block of tasks
                    ]
                    # A learner with its own outer update (MAML-TRPO's constrained step) does it in
                    # `outer_step` (given the trainer's optimiser, whose state is checkpointed); None there
                    # means the default: the mean task loss's gradient + one optimiser step.
                    outer_step = getattr(self.learner, "outer_step", None)
                    task_metrics = None if outer_step is None else outer_step(tasks, (step, cfg.steps), self.optimizer)
                    own_update = task_metrics is not None
                    if not own_update:
                        self.optimizer.zero_grad(set_to_none=True)
                        task_metrics = engine.meta_gradient(self.learner, tasks, progress=(step, cfg.steps))
                        check_step(self.learner, self.run_dir, fix, step + 1, task_metrics)  # NaN/inf: stop
                        self.optimizer.step()
                    else:
                        check_step(self.learner, self.run_dir, fix, step + 1, task_metrics)  # its losses
                    check_step(self.learner, self.run_dir, fix, step + 1)  # before any weight is saved
                    lr = self.optimizer.param_groups[0]["lr"]
                    if not own_update:  # the schedule advances with the optimiser's steps
                        self.scheduler.step()
                    self.state["step"] = step = step + 1
                    window = self.state["window"]
                    window["n"] += len(task_metrics)
                    window["loss"] += sum(m["loss"] for m in task_metrics)
                    window["metric"] += sum(m.get(metric, m["loss"]) for m in task_metrics)
                    row = None
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        row = {
                            "step": step,
                            "lr": lr,
                            "train_loss": window["loss"] / window["n"],
                            "train_metric": window["metric"] / window["n"],
                        }
                        self.state["window"] = {"n": 0, "loss": 0.0, "metric": 0.0}
                    if val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                        result = evaluate(self.learner, val_set, self.device)
                        row = dict(row or {"step": step, "lr": lr}, val_metric=result["mean"], val_ci95=result["ci95"])
                        # the learner's other metrics too (RL: the return after each step), so a run
                        # shows what another selection would have picked
                        row.update({f"val_{k}": v["mean"] for k, v in result["others"].items()})
                        score = result["mean"] if select == metric else result["others"][select]["mean"]
                        if better(select, score, self.state["best"]):
                            self.state["best"], self.state["best_step"] = score, step
                            save_finite_weights(
                                self.run_dir / "best.safetensors",
                                self.learner,
                                {"step": step, "fingerprint": self.fingerprint},
                            )
                    if row is not None and self.dist.is_main:
                        self.state["elapsed"] = time.perf_counter() - started
                        row["elapsed_s"] = round(self.state["elapsed"], 2)
                        self.state["history"].append(row)
                        write_metrics_csv(self.run_dir / "metrics.csv", self.state["history"])
                        tensorboard.write(row)
                        progress.update(step, row, metric)
                        if on_validation is not None and row.get("val_metric") is not None:
                            on_validation(step, row["val_metric"])
                    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                        self.state["elapsed"] = time.perf_counter() - started
                        self._checkpoint()
                        if stop_after is not None and step >= stop_after and step < cfg.steps:
                            return None
                    progress.advance(step)
        finally:
            engine.close()
            if tensorboard is not None:
                tensorboard.close()
        if not self.dist.is_main:
            return None  # rank 0 writes the selected weights, the plot and the test result
        if val_set is None:
            save_finite_weights(
                self.run_dir / "best.safetensors",
                self.learner,
                {"step": self.state["step"], "fingerprint": self.fingerprint},
            )
            self.state["best_step"] = self.state["step"]
        e = cfg.episodes
        shape = f"({e.ways}-way {e.shots}-shot episodes)" if e.ways else f"({e.shots}-shot tasks)"
        plot_learning_curve(
            self.run_dir / "curve.png",
            self.state["history"],
            metric,
            f"{self.config.name} ({type(self.learner).__name__})",
            shape,
        )
        if not test:
            return None
        return evaluate_run(self.run_dir, data_root=self.data_root, quiet=self.quiet, trainer=self)


def load_run(run_dir: str | Path, data_root=None, quiet: bool = True) -> Trainer:
    """A trainer for an existing run folder, with the selected (best or last) weights loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FastAdaptError(
            f"{run_dir} is not a run folder (no config.yaml); give the --out folder of a `fastadapt train` run"
        )
    if not (run_dir / "best.safetensors").is_file():
        raise FastAdaptError(
            f"{run_dir} has no trained weights yet (best.safetensors); finish or resume "
            f"training with `fastadapt train {run_dir}`"
        )
    config = config_from_dict(read_run_config(run_dir))
    trainer = Trainer(config, run_dir, data_root=data_root, quiet=quiet)
    trainer._resume()  # the trainer state: steps done, selected step, training time
    load_weights(run_dir / "best.safetensors", trainer.learner, trainer.fingerprint)
    return trainer


def evaluate_run(
    run_dir: str | Path, *, data_root=None, quiet: bool = True, trainer: Trainer | None = None, **options
) -> dict:
    """Evaluate a run's selected weights on a fixed, seeded test set; write eval JSON + episodes.
    `options` are `fastadapt.scoring.score_run`'s: ways, shots, queries, episodes, seed (the run's
    eval settings by default); adapt_steps (test-time gradient steps of learners that take them);
    data (a dataset name), data_settings (`data.*=value` items) and split, to evaluate on another
    dataset (cross-domain) with the same fixed-episode protocol; learner_settings
    (`learner.args.*=value` items of the learner's `test_time_args`)."""
    run_dir = Path(run_dir)
    if trainer is None:
        trainer = load_run(run_dir, data_root=data_root, quiet=quiet)
    else:
        load_weights(run_dir / "best.safetensors", trainer.learner, trainer.fingerprint)
    return score_run(trainer, run_dir, data_root=data_root, **options)
