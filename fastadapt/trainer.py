"""The one trainer for every learner: meta-batches in, checkpoints and results out.

Exact resume: a task is a pure function of its index (step * meta_batch + i), and the
checkpoint holds everything else that changes during training (weights, optimiser, scheduler,
RNG states, the partial logging window, history, best score). A run resumed from any checkpoint
ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .checkpoint import load_checkpoint, load_weights, save_checkpoint, settings_fingerprint
from .config import Config, config_from_dict
from .data import build_suite
from .divergence import check_step, require_finite_weights, save_finite_weights
from .engine import make_engine
from .errors import FastAdaptError
from .evaluate import better, evaluate
from .learners import build_learner
from .progress import Progress
from .registry import BACKBONES, DATASETS, LEARNERS
from .report import plot_learning_curve, write_metrics_csv
from .runlock import read_run_config, remove_stale_temp_files, run_lock
from .utils import atomic_write_text, machine_info, resolve_device


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
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.lr_min)
    if cfg.lr_schedule == "linear":  # to zero at the last step (Reptile's annealed meta step size)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / cfg.steps))
    raise FastAdaptError(f"unknown train.lr_schedule {cfg.lr_schedule!r}; choose constant, step, cosine or linear")


def _optimizer(params, cfg) -> torch.optim.Optimizer:
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
        _validate(config)
        _seed_everything(config.seed)
        self.device = resolve_device(config.train.device)
        self.suite = build_suite(config, data_root, download)
        channels_last = config.model.channels_last
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        # A trained run records its model's input shape, so loading it (eval on other data,
        # predict) needs neither its training data nor a pass over it.
        shape = _read_model_info(self.run_dir) or {
            "input_shape": self.suite.input_shape,
            "num_train_classes": self.suite.num_train_classes,
        }
        self.model_info = {"input_shape": list(shape["input_shape"]), "num_train_classes": shape["num_train_classes"]}
        self.learner = build_learner(config, tuple(shape["input_shape"]), channels_last, shape["num_train_classes"]).to(
            self.device
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
        config_path = self.run_dir / "config.yaml"
        wanted = self.config.to_dict()
        if config_path.exists():
            raw = read_run_config(self.run_dir)  # binary, truncated, not a mapping: one line
            try:
                existing = config_from_dict(raw).to_dict()
            except FastAdaptError as exc:
                raise FastAdaptError(f"{config_path}: {exc}") from None
            if existing != wanted:
                changed = sorted(k for k in wanted if wanted[k] != existing.get(k))
                raise FastAdaptError(
                    f"run folder {self.run_dir} holds a run with other settings "
                    f"(differs in: {', '.join(changed)}); resume it with the same "
                    f"settings or choose a new --out"
                )
        else:
            # A folder that is not a run folder (and not empty) is the user's, e.g. their data:
            # never write a run into it.
            other = (
                sorted(p.name for p in self.run_dir.iterdir() if not p.name.startswith("."))
                if self.run_dir.is_dir()
                else []
            )
            if other:
                raise FastAdaptError(
                    f"--out {self.run_dir} is a folder with other files ({', '.join(other[:3])}"
                    f"{' ...' if len(other) > 3 else ''}) and no config.yaml, so it is not a run "
                    f"folder; give a new or empty folder"
                )
            atomic_write_text(config_path, yaml.safe_dump(wanted, sort_keys=False))

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
    def fit(self, stop_after: int | None = None) -> dict | None:
        """Train to `train.steps` (resuming if the run folder has a checkpoint), then evaluate
        the selected checkpoint on the fixed test episodes. `stop_after` ends early, right
        after the checkpoint at that step (an interruption, for tests). The run folder is
        locked throughout: a second process on it stops with a one-line error."""
        with run_lock(self.run_dir):
            remove_stale_temp_files(self.run_dir)  # left by a killed run; the lock keeps live writers out
            return self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> dict | None:
        cfg = self.config.train
        self.suite.check()  # data errors come before the run folder is claimed with config.yaml
        self._prepare_run_dir()
        atomic_write_text(self.run_dir / "model.json", json.dumps(self.model_info))
        self._resume()
        val_set = None
        if self.config.data.val_split:
            e = self.config.eval
            val_set = self.suite.fixed_set(
                self.config.data.val_split, e.ways, e.shots, e.queries, cfg.val_episodes, e.seed + 1
            )
        engine = make_engine(
            cfg.engine,
            self.learner,
            self.device,
            cfg.meta_batch,
            cfg.workers,
            chunk_size=cfg.chunk_size,
            compile=cfg.compile,
        )
        self._log(
            f"{self.config.name}: {type(self.learner).__name__} on {self.config.data.dataset}, "
            f"{cfg.steps} steps x {cfg.meta_batch} tasks, engine={engine.name}, device={self.device}"
        )
        metric = self.learner.primary_metric
        started = time.perf_counter() - self.state["elapsed"]
        self.learner.train()
        try:
            with Progress(cfg.steps, self.state["step"], enabled=not self.quiet) as progress:
                while self.state["step"] < cfg.steps:
                    step = self.state["step"]
                    tasks = [
                        self.suite.train_task(step * cfg.meta_batch + i).to(self.device) for i in range(cfg.meta_batch)
                    ]
                    self.optimizer.zero_grad(set_to_none=True)
                    task_metrics = engine.meta_gradient(self.learner, tasks, progress=(step, cfg.steps))
                    check_step(self.learner, self.run_dir, cfg.lr, step + 1, task_metrics)  # NaN/inf: stop
                    self.optimizer.step()
                    check_step(self.learner, self.run_dir, cfg.lr, step + 1)  # before any weight is saved
                    lr = self.optimizer.param_groups[0]["lr"]
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
                        if better(metric, result["mean"], self.state["best"]):
                            self.state["best"], self.state["best_step"] = result["mean"], step
                            save_finite_weights(
                                self.run_dir / "best.safetensors",
                                self.learner,
                                {"step": step, "fingerprint": self.fingerprint},
                            )
                    if row is not None:
                        self.state["elapsed"] = time.perf_counter() - started
                        row["elapsed_s"] = round(self.state["elapsed"], 2)
                        self.state["history"].append(row)
                        write_metrics_csv(self.run_dir / "metrics.csv", self.state["history"])
                        progress.update(step, row, metric)
                    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                        self.state["elapsed"] = time.perf_counter() - started
                        self._checkpoint()
                        if stop_after is not None and step >= stop_after and step < cfg.steps:
                            return None
                    progress.advance(step)
        finally:
            engine.close()
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
        return evaluate_run(self.run_dir, data_root=self.data_root, quiet=self.quiet, trainer=self)


def _validate(config: Config) -> None:
    """Fail fast, before any data is loaded. Each setting's own range is checked when the config
    is built (fastadapt.config: `ranged`, `matching`, Literal choices); this checks the names of
    the registered parts and the settings that depend on each other."""
    config_from_dict(config.to_dict())  # the ranges again, for a Config built in code
    from .learners.base import parse_args
    from .models import parse_settings

    learner_cls = LEARNERS.get(config.learner.name)
    if getattr(learner_cls, "Args", None) is not None:
        parse_args(learner_cls.Args, config.learner.args)  # the learner's ranges, before any data
    backbone_args = None
    backbone_cls = BACKBONES.get(config.model.backbone)
    if getattr(backbone_cls, "Args", None) is not None:
        backbone_args = parse_settings(backbone_cls.Args, config.model.backbone_args, "model.backbone_args")
    dataset_cls = DATASETS.get(config.data.dataset)
    problem = getattr(dataset_cls, "problem", None)
    splits = getattr(dataset_cls, "splits", None)
    if isinstance(splits, (tuple, list)) and splits:
        for key in ("train_split", "val_split", "test_split"):
            split = getattr(config.data, key)
            if split is not None and split not in splits:
                raise FastAdaptError(
                    f"data.{key} must be one of {', '.join(splits)} for {config.data.dataset}"
                    f"{' (or null)' if key == 'val_split' else ''}; got {split!r}"
                )
    pooled = getattr(backbone_args, "pooled_blocks", None)
    if problem == "classification" and isinstance(pooled, int) and config.data.image_size >> pooled < 1:
        raise FastAdaptError(
            f"data.image_size must be >= {2**pooled} for {config.model.backbone} with {pooled} "
            f"poolings, got {config.data.image_size}; or lower model.backbone_args.pooled_blocks"
        )
    train_ways, eval_ways = config.train.episodes.ways, config.eval.ways
    if problem == "classification":
        for key, ways in (("train.episodes.ways", train_ways), ("eval.ways", eval_ways)):
            if ways is None:
                raise FastAdaptError(
                    f"{key} must be an integer >= 2 for the classification dataset {config.data.dataset}, got null"
                )
        if getattr(learner_cls, "needs_head", False) and eval_ways != train_ways:
            raise FastAdaptError(
                f"eval.ways must equal train.episodes.ways ({train_ways}) for "
                f"{config.learner.name}, whose head has that many outputs; got {eval_ways}"
            )


def _applicable_reference(config: Config, ways, shots, adapt_steps: int | None = None) -> dict:
    """The paper's number applies only to the preset's own test setting and data. A preset may
    give numbers for other test-time step counts under `reference.by_adapt_steps`."""
    own_test = (ways, shots) == (config.eval.ways, config.eval.shots)
    # the number of test episodes and their seed change the estimate's precision, not what is measured
    changed = any(
        o.startswith(("data.", "eval.", "model.", "learner.")) and not o.startswith(("eval.episodes=", "eval.seed="))
        for o in config.overrides
    )
    if not own_test or changed:
        return {}
    reference = {k: v for k, v in config.reference.items() if k != "by_adapt_steps"}
    if adapt_steps is None or adapt_steps == config.learner.args.get("eval_inner_steps"):
        return reference
    other = (config.reference.get("by_adapt_steps") or {}).get(adapt_steps)
    return {"paper": reference.get("paper"), **other} if other else {}


def _read_model_info(run_dir: Path) -> dict | None:
    """The run's recorded model input (`model.json`: input_shape, num_train_classes), or None."""
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        shape, classes = info["input_shape"], info["num_train_classes"]
        if not (
            isinstance(shape, list)
            and shape
            and all(isinstance(v, int) and v > 0 for v in shape)
            and (classes is None or (isinstance(classes, int) and classes > 0))
        ):
            raise ValueError("bad values")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FastAdaptError(
            f"{path} is unreadable ({exc}); delete it (it is rewritten by `fastadapt train "
            f"{run_dir}`, which needs the training data)"
        ) from None
    return {"input_shape": shape, "num_train_classes": classes}


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
    run_dir: str | Path,
    *,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    data_root=None,
    quiet: bool = True,
    trainer: Trainer | None = None,
    adapt_steps: int | None = None,
    data: str | None = None,
    data_settings: list[str] | None = None,
    split: str | None = None,
) -> dict:
    """Evaluate a run's selected weights on a fixed, seeded test set; write eval JSON + episodes.
    `adapt_steps` overrides the number of test-time gradient steps of learners that take them.
    `data` (a dataset name) with `data_settings` (`data.*=value` items) and `split` evaluates on
    another dataset (cross-domain), with the same fixed-episode protocol."""
    run_dir = Path(run_dir)
    if trainer is None:
        trainer = load_run(run_dir, data_root=data_root, quiet=quiet)
    else:
        load_weights(run_dir / "best.safetensors", trainer.learner, trainer.fingerprint)
    config, learner = trainer.config, trainer.learner
    e = config.eval
    ways = e.ways if ways is None else ways
    shots, queries = shots or e.shots, queries or e.queries
    episodes, seed = episodes or e.episodes, e.seed if seed is None else seed
    if learner.needs_head and learner.problem == "classification" and ways != config.train.episodes.ways:
        raise FastAdaptError(
            f"{config.learner.name} was trained {config.train.episodes.ways}-way and its head has that "
            f"many outputs; evaluate with --ways {config.train.episodes.ways}"
        )
    if adapt_steps is not None:
        if not hasattr(learner, "eval_inner_steps"):
            raise FastAdaptError(f"{config.learner.name} takes no test-time gradient steps; drop --adapt-steps")
        if adapt_steps < 1:
            raise FastAdaptError(f"--adapt-steps must be >= 1, got {adapt_steps}")
        learner.eval_inner_steps = adapt_steps
    suite, dataset, test_split, prefix = trainer.suite, config.data.dataset, config.data.test_split, ""
    if data is not None or data_settings or split is not None:
        suite, test_split = cross_domain_suite(trainer, data or dataset, data_settings or [], split, data_root)
        dataset = suite.config.data.dataset
        data_key = dataclasses.asdict(suite.config.data)
        digest = hashlib.sha256(json.dumps(data_key, sort_keys=True, default=str).encode()).hexdigest()[:8]
        prefix = f"{dataset}-{test_split}-{digest}-"  # one file per data setting: other folders never overwrite it
    test_set = suite.fixed_set(test_split, ways, shots, queries, episodes, seed)
    tag = prefix + (
        f"{ways}w{shots}s{queries}q-{episodes}ep-seed{seed}"
        if ways
        else f"{shots}shot{queries}q-{episodes}ep-seed{seed}"
    )
    episodes_tag = tag
    if adapt_steps is not None:
        tag += f"-{adapt_steps}steps"
    test_set.save(run_dir / "episodes" / f"test-{episodes_tag}.npz")
    result = evaluate(learner, test_set, trainer.device)
    record = {
        "preset": config.name,
        "method": config.learner.name,
        "dataset": dataset,
        "split": test_split,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "episodes": episodes,
        "seed": seed,
        "metric": result["metric"],
        result["metric"]: result["mean"],
        "ci95": result["ci95"],
        "std": result["std"],
        "diverged_episodes": result["nonfinite"],
        "learner": learner.describe(),
        "bn_mode": learner.describe().get("bn_mode", "none"),
        "train_steps": trainer.state["step"],
        "selected_step": trainer.state["best_step"],
        "eval_seconds": round(result["seconds"], 2),
        "train_seconds": round(trainer.state["elapsed"], 2),
        "episodes_file": f"episodes/test-{episodes_tag}.npz",
        "adapt_steps": getattr(learner, "eval_inner_steps", None),
        "machine": machine_info(trainer.device),
        "reference": {} if prefix else _applicable_reference(config, ways, shots, adapt_steps),
        "trained_on": config.data.dataset,
        "overrides": config.overrides,
        "data_args": suite.config.data.args if prefix else config.data.args,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    own = (
        (ways, shots, queries, episodes, seed) == (e.ways, e.shots, e.queries, e.episodes, e.seed)
        and adapt_steps is None
        and not prefix
    )
    name = "eval.json" if own else f"eval-{tag}.json"
    atomic_write_text(run_dir / name, json.dumps(record, indent=2))
    return record


def cross_domain_suite(trainer: Trainer, dataset: str, settings: list[str], split: str | None, data_root):
    """The suite of another dataset (or other data settings) for a trained run, and the split to test on.

    `settings` are `data.<key>=value` items (e.g. `data.args.root=DIR`). The image size is the
    run's; a dataset with a `channels` setting gets the run's channel count unless set. The
    default split is `all` where the dataset has one (a user's folder), else `test`.
    """
    bad = [s for s in settings if not s.startswith("data.")]
    if bad:
        raise FastAdaptError(f"--set {bad[0]!r}: only data.* settings can change when evaluating a trained run")
    from .config import apply_overrides
    from .registry import DATASETS

    suite_cls = DATASETS.get(dataset)
    shape = tuple(trainer.model_info["input_shape"])
    base = {"dataset": dataset, "image_size": trainer.config.data.image_size, "args": {}}
    fields = getattr(suite_cls.Args, "__dataclass_fields__", {})
    if len(shape) == 3 and "channels" in fields:
        base["args"]["channels"] = shape[0]
    if "invert" in fields:  # read the user's images the way `predict` does for this run
        base["args"]["invert"] = bool(getattr(trainer.suite, "inverted_ink", False))
    values = apply_overrides({"data": base}, settings)["data"]
    chosen = split or ("all" if "all" in getattr(suite_cls, "splits", ()) else "test")
    values.update(train_split=chosen, val_split=None, test_split=chosen)
    raw = trainer.config.to_dict()
    raw["data"] = values
    config = config_from_dict(raw)
    suite = suite_cls(config, data_root, False)
    if suite.problem != trainer.suite.problem:
        raise FastAdaptError(f"{dataset} is a {suite.problem} dataset but the run learned {trainer.suite.problem}")
    if tuple(suite.input_shape) != shape:
        raise FastAdaptError(
            f"{dataset} ({chosen}) gives inputs of shape {tuple(suite.input_shape)} but the run's model "
            f"takes {shape}; set data.image_size / data.args.channels to match"
        )
    return suite, chosen
