"""Scoring a trained run: its fixed test episodes (own data or another dataset), the eval JSON
record, the paper number that applies, and the recorded model input (`model.json`).

`fastadapt.trainer.evaluate_run` loads a run and calls `score_run`; this module never builds a
trainer itself, so it imports nothing from the trainer (no import cycle).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .config import Config, config_from_dict
from .errors import FastAdaptError
from .evaluate import evaluate
from .learners.base import fields_of, parse_args
from .utils import atomic_write_text, machine_info

if TYPE_CHECKING:
    from .trainer import Trainer


def applicable_reference(
    config: Config,
    ways,
    shots,
    adapt_steps: int | None = None,
    split: str | None = None,
    queries: int | None = None,
    episodes: int | None = None,
) -> dict:
    """The paper's number applies only to the paper's test setting on the preset's data: the
    preset's own test (ways, shots, data.test_split), or the one its `reference.test` names where
    the paper tested otherwise (2D navigation: `{split: paper, shots: 40, queries: 40}`, the
    authors' goals and batch; then the run's own eval.* settings do not matter). A preset may give
    numbers for other test-time step counts under `reference.by_adapt_steps`. `split`: the tested
    split (None: data.test_split); `queries`: checked only where `reference.test` names them;
    `episodes`: checked only where it names `episodes_multiple_of` (ML10: the paper weighs its 5
    test environments equally, and test task i is environment i mod 5)."""
    protocol = config.reference.get("test") or {}
    wanted = (
        protocol.get("ways", config.eval.ways),
        protocol.get("shots", config.eval.shots),
        protocol.get("split", config.data.test_split),
        protocol.get("queries"),
    )
    tested = (ways, shots, split or config.data.test_split, queries if "queries" in protocol else None)
    own_test = tested == wanted
    multiple = protocol.get("episodes_multiple_of")
    if multiple and (episodes is None or episodes % multiple):
        own_test = False
    # the number of test episodes and their seed change the estimate's precision, not what is
    # measured; the validation split, like train.*, changes which weights are tested, not the test
    unchanged = ("eval.episodes=", "eval.seed=", "data.val_split=") + (("eval.",) if protocol else ())
    changed = any(
        o.startswith(("data.", "eval.", "model.", "learner.")) and not o.startswith(unchanged) for o in config.overrides
    )
    if not own_test or changed:
        return {}
    reference = {k: v for k, v in config.reference.items() if k not in ("by_adapt_steps", "test")}
    if adapt_steps is None or adapt_steps == config.learner.args.get("eval_inner_steps"):
        return reference
    other = (config.reference.get("by_adapt_steps") or {}).get(adapt_steps)
    return {"paper": reference.get("paper"), **other} if other else {}


def read_model_info(run_dir: Path) -> dict | None:
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


def score_run(
    trainer: Trainer,
    run_dir: Path,
    *,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    data_root=None,
    adapt_steps: int | None = None,
    data: str | None = None,
    data_settings: list[str] | None = None,
    split: str | None = None,
    learner_settings: list[str] | None = None,
) -> dict:
    """`fastadapt.trainer.evaluate_run` once the trainer holds the selected weights: the fixed test
    episodes, the scores, and the eval JSON record (written into `run_dir` and returned).
    `learner_settings`: `learner.args.<field>=value` items for the learner's `test_time_args`."""
    config, learner = trainer.config, trainer.learner
    if ways is not None and learner.problem != "classification":
        kind = "an RL" if learner.problem == "rl" else f"a {learner.problem}"
        raise FastAdaptError(f"{run_dir} is {kind} run: its tasks have no ways; drop --ways")
    if shots is not None and learner.no_support:
        raise FastAdaptError(
            f"{config.learner.name} adapts within its trials, with no support rollouts: drop --shots (--queries "
            f"sets the trials per task, now {config.eval.queries})"
        )
    trained_args = getattr(learner, "args", None)  # restored after this test (test-time settings)
    changed = apply_test_settings(learner, config.learner.name, learner_settings or [])
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
    if split is not None and not split.strip():
        raise FastAdaptError("--split is empty; name a split (e.g. test, val, all) or drop --split")
    if data == config.data.dataset and not data_settings:
        data = None  # the run's own dataset, named: the same test as without --data, in the same file
    own_data = data is None and not data_settings
    if split == config.data.test_split and own_data:
        split = None  # the run's own test: the same result as without --split, in the same file
    suite, dataset, test_split, prefix = trainer.suite, config.data.dataset, config.data.test_split, ""
    if data is not None or data_settings or split is not None:
        suite, test_split = cross_domain_suite(
            trainer, data or dataset, data_settings or [], split, data_root, (ways, shots, queries)
        )
        dataset = suite.config.data.dataset
        # one file per data setting, so other folders never overwrite it; the run's own data on
        # another of its splits is named by the split alone
        prefix = f"{test_split}-"
        if not own_data:
            data_key = json.dumps(dataclasses.asdict(suite.config.data), sort_keys=True, default=str)
            prefix = f"{dataset}-{prefix}{hashlib.sha256(data_key.encode()).hexdigest()[:8]}-"
    test_set = suite.fixed_set(test_split, ways, shots, queries, episodes, seed)
    tag = prefix + (
        f"{ways}w{shots}s{queries}q-{episodes}ep-seed{seed}"
        if ways
        else f"{shots}shot{queries}q-{episodes}ep-seed{seed}"
    )
    episodes_tag = tag
    if adapt_steps is not None:
        tag += f"-{adapt_steps}steps"
    tag += "".join(f"-{key}{value}" for key, value in changed.items())
    test_set.save(run_dir / "episodes" / f"test-{episodes_tag}.npz")
    try:
        result = evaluate(learner, test_set, trainer.device)
        described = learner.describe()  # as tested
    finally:
        if changed:
            learner.args = trained_args
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
        **({"other_metrics": result["others"]} if result.get("others") else {}),  # RL: return after k steps
        "learner": described,
        "bn_mode": described.get("bn_mode", "none"),
        "train_steps": trainer.state["step"],
        "selected_step": trainer.state["best_step"],
        "eval_seconds": round(result["seconds"], 2),
        "train_seconds": round(trainer.state["elapsed"], 2),
        "episodes_file": f"episodes/test-{episodes_tag}.npz",
        "adapt_steps": getattr(learner, "eval_inner_steps", None),
        **({"test_settings": changed} if changed else {}),
        "machine": machine_info(trainer.device),
        "reference": applicable_reference(config, ways, shots, adapt_steps, test_split, queries, episodes)
        if own_data
        else {},
        "selected_on": config.train.select_metric or learner.primary_metric,  # the validation metric
        "trained_on": config.data.dataset,
        "overrides": config.overrides,
        "data_args": suite.config.data.args if prefix else config.data.args,
        # eval's --set data.* items: the results table shows them
        **({"data_settings": list(data_settings)} if data_settings else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    own = (
        (ways, shots, queries, episodes, seed) == (e.ways, e.shots, e.queries, e.episodes, e.seed)
        and adapt_steps is None
        and not prefix
        and not changed
    )
    name = "eval.json" if own else f"eval-{tag}.json"
    atomic_write_text(run_dir / name, json.dumps(record, indent=2))
    return record


def apply_test_settings(learner, name: str, items: list[str]) -> dict:
    """Set `learner.args.<field>=value` items (values parsed as YAML) on the learner for this test,
    after checking each field is one of its `test_time_args` and the value passes `Args`'
    checks. Returns {field: value} for the eval record; one-line errors otherwise."""
    changes, allowed = {}, getattr(learner, "test_time_args", ())
    for item in items:
        key, sep, raw = item.partition("=")
        field = key.removeprefix("learner.args.")
        if not sep:
            raise FastAdaptError(f"--set {item!r} is not key=value (e.g. --set {key}=0.1)")
        if field in ("eval_inner_steps", "inner_steps"):  # training's inner_steps is fixed; the test's is a flag
            raise FastAdaptError(f"--set {item!r}: the number of test-time steps is --adapt-steps {raw}")
        if field == key or field not in allowed:
            what = f"{name}'s test-time settings are {', '.join(allowed)}" if allowed else f"{name} has none"
            close = difflib.get_close_matches(field, allowed, n=1)
            hint = f"; did you mean learner.args.{close[0]}?" if close and field != key else ""
            raise FastAdaptError(
                f"--set {item!r}: a trained run can change data.* settings and test-time learner.args "
                f"({what}); the others need `fastadapt train`{hint}"
            )
        changes[field] = yaml.safe_load(raw)
    if changes:
        learner.args = parse_args(type(learner.args), {**fields_of(learner.args), **changes})
    return changes


def cross_domain_suite(
    trainer: Trainer, dataset: str, settings: list[str], split: str | None, data_root, episode_shape=None
):
    """The suite of another dataset (or other data settings) for a trained run, and the split to test on.

    `settings` are `data.<key>=value` items (e.g. `data.args.root=DIR`). The image size is the
    run's; a dataset with a `channels` setting gets the run's channel count unless set. The
    default split is `all` where the dataset has one (a user's folder), else `test`.
    `episode_shape` (ways, shots, queries): the test episodes' own, which the dataset checks its
    classes against (default: the run's eval settings).
    """
    bad = [s for s in settings if not s.startswith("data.")]
    if bad:
        raise FastAdaptError(
            f"--set {bad[0]!r}: a trained run can change data.* settings and test-time learner.args "
            "when evaluated; the others need `fastadapt train`"
            + (" (eval.*: use --episodes, --ways, --shots, --queries, --seed)" if bad[0].startswith("eval.") else "")
        )
    moved = [s for s in settings if s.startswith("data.dataset=")]
    if moved:
        raise FastAdaptError(f"--set {moved[0]!r}: name another dataset with --data DATASET")
    from .config import apply_overrides
    from .registry import DATASETS

    suite_cls = DATASETS.get(dataset)
    if suite_cls.problem != trainer.suite.problem:  # before its settings, which would be checked for the wrong kind
        raise FastAdaptError(f"{dataset} is a {suite_cls.problem} dataset but the run learned {trainer.suite.problem}")
    shape = tuple(trainer.model_info["input_shape"])
    # the run's own dataset keeps every setting it was trained with (horizon, class split, ...);
    # `settings` then change only what they name
    same = dataset == trainer.config.data.dataset
    own = dict(trainer.config.data.args or {}) if same else {}
    base = {"dataset": dataset, "image_size": trainer.config.data.image_size, "args": own}
    fields = getattr(suite_cls.Args, "__dataclass_fields__", {})
    if len(shape) == 3 and "channels" in fields:
        base["args"].setdefault("channels", shape[0])
    if "invert" in fields:  # read the user's images the way `predict` does for this run
        base["args"]["invert"] = bool(getattr(trainer.suite, "inverted_ink", False))
    # RL on another task family: rollouts as long as the run's (the run's own dataset keeps it too)
    if suite_cls.problem == "rl" and "horizon" in fields and not same:
        base["args"]["horizon"] = trainer.suite.args.horizon
    # text on another dataset: encode the sentences as the run's were
    for key in ("encoder", "representation", "max_length"):
        if key in fields and key in (trainer.config.data.args or {}):
            base["args"][key] = trainer.config.data.args[key]
    values = apply_overrides({"data": base}, settings)["data"]
    chosen = split or ("all" if "all" in getattr(suite_cls, "splits", ()) else "test")
    values.update(train_split=chosen, val_split=None, test_split=chosen)
    raw = trainer.config.to_dict()
    raw["data"] = values
    if episode_shape is not None:  # the dataset checks its classes against the episodes asked for
        raw["eval"].update(zip(("ways", "shots", "queries"), episode_shape))
        raw["train"]["episodes"].update(zip(("shots", "queries"), episode_shape[1:]))  # this suite only tests
    config = config_from_dict(raw)
    suite = suite_cls(config, data_root, False)
    suite.require_split(chosen)  # a bad --split first: the shape below depends on nothing it names
    if tuple(suite.input_shape) != shape and suite.problem == "rl":
        raise FastAdaptError(
            f"{dataset}'s observations have {suite.input_shape[0]} values but the run's policy takes "
            f"{shape[0]} (it learned {trainer.config.data.dataset}); evaluate on a task family with that "
            f"observation size"
        )
    if tuple(suite.input_shape) != shape:
        raise FastAdaptError(
            f"{dataset} ({chosen}) gives inputs of shape {tuple(suite.input_shape)} but the run's model "
            f"takes {shape}; set data.image_size / data.args.channels to match"
        )
    return suite, chosen
