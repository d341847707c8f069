"""Applying a trained run to the user's own few-shot task.

    model = fastadapt.load("runs/protonet-omniglot-5w1s")
    task = model.adapt(["a1.png", "a2.png", "b1.png"], ["alpha", "alpha", "beta"])
    task.predict(["q1.png", "q2.png"])        # -> ["beta", "alpha"]
    task.predict_proba(["q1.png"])            # -> (1, 2) array, columns in task.classes order

Runs trained on sentences (banking77, clinc150, textfile) take lists of strings instead:

    model = fastadapt.load("runs/protonet-banking77-5w1s")
    model.adapt(["card got stuck", "where is my card?"], ["atm", "delivery"]).predict(["my card is late"])

The model adapts to the support set exactly as evaluation does (prototypes, MAML inner steps,
fine-tuning a new head, ...). Support sets may have any number of classes (within what the
learner can represent, see `FewShotModel.adapt`) and unequal shots per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.episode import Episode
from .errors import FastAdaptError

Items = Sequence[str | Path] | np.ndarray | torch.Tensor


class FewShotModel:
    """A trained run, ready to adapt to new tasks. Build it with `fastadapt.load(run_dir)`."""

    def __init__(self, trainer, run_dir: Path):
        self.trainer, self.run_dir = trainer, run_dir
        self.learner, self.config, self.suite = trainer.learner, trainer.config, trainer.suite
        self.device = trainer.device
        self.input_shape = tuple(trainer.model_info["input_shape"])
        self.learner.eval()

    def __repr__(self) -> str:
        return (
            f"FewShotModel({self.config.learner.name} from {self.run_dir}, input {self.input_shape}, "
            f"trained on {self.config.data.dataset})"
        )

    @property
    def problem(self) -> str:
        return self.learner.problem

    def fixed_ways(self) -> int | None:
        """The only number of classes the learner can label, or None for any number. Learners with
        an output unit per class (MAML-family heads, GNN's and CNP's one-hot label inputs) are
        fixed at their training ways: a head trained for 5 outputs cannot score a 7th class, and
        dropping units would change the model they were meta-trained as."""
        if self.problem != "classification":
            return None
        if self.learner.needs_head or hasattr(self.learner, "ways"):
            return self.config.train.episodes.ways
        return None

    @property
    def takes_text(self) -> bool:
        """True for runs trained on sentences: strings are then sentences, not file paths."""
        return getattr(self.suite, "modality", "image") == "text"

    def inputs(self, items: Items) -> torch.Tensor:
        """Model inputs from file paths (read as the training data was: size, channels, Omniglot's
        ink inversion), or arrays already shaped and preprocessed like the training items: uint8
        images (N, C, H, W) (scaled to [0, 1]) or float arrays as they are (no inversion). For a
        text run, sentences (strings), encoded as the run's training sentences were (its encoder's
        embeddings (N, D), or token ids (N, L) padded to the run's length)."""
        if isinstance(items, (str, Path)):
            what = "sentences (e.g. [sentence])" if self.takes_text else "inputs (e.g. [path])"
            raise FastAdaptError(f"give a list of {what}, not a single {'sentence' if self.takes_text else 'path'}")
        if self.takes_text and isinstance(items, (list, tuple)) and items and all(isinstance(i, str) for i in items):
            x = self.suite.items_from_texts(list(items), self.input_shape)
        elif isinstance(items, (list, tuple)) and items and all(isinstance(i, (str, Path)) for i in items):
            if not hasattr(self.suite, "item_from_file"):
                raise FastAdaptError(f"{self.config.data.dataset} runs take arrays, not files; pass a tensor")
            x = torch.from_numpy(np.stack([self.suite.item_from_file(p, self.input_shape[0]) for p in items]))
        else:
            x = torch.as_tensor(np.asarray(items) if isinstance(items, (list, tuple)) else items)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif x.is_floating_point():
            x = x.float()
        if x.dim() == 0 or tuple(x.shape[1:]) != self.input_shape:
            raise FastAdaptError(
                f"inputs have shape {tuple(x.shape)} but the model takes (N, "
                f"{', '.join(map(str, self.input_shape))}); resize them or pass file paths"
            )
        return x

    def adapt(self, support: Items, labels: Sequence, adapt_steps: int | None = None) -> AdaptedTask:
        """Adapt to a labelled support set: `support` (N items, see `inputs`), `labels` (N,) of any
        hashable values (class names). Classes are ordered by sorted label. `adapt_steps`
        overrides the test-time gradient steps of learners that take them (MAML family,
        fine-tuning baselines)."""
        x = self.inputs(support)
        labels = list(np.asarray(labels).tolist()) if not isinstance(labels, list) else list(labels)
        if len(labels) != len(x):
            raise FastAdaptError(f"got {len(x)} support inputs but {len(labels)} labels; give one label per input")
        if self.problem == "regression":
            return AdaptedTask(self, x, torch.as_tensor(np.asarray(labels, np.float32)).view(len(x), -1), None)
        classes = sorted(set(labels), key=str)
        if len(classes) < 2:
            raise FastAdaptError(f"the support set has {len(classes)} class; few-shot classification needs at least 2")
        fixed = self.fixed_ways()
        if fixed is not None and len(classes) != fixed:
            raise FastAdaptError(
                f"{self.config.learner.name} in {self.run_dir} was meta-trained {fixed}-way and has "
                f"{fixed} class outputs; give a support set of exactly {fixed} classes (got "
                f"{len(classes)}) or use a learner that takes any number (protonet, matching, "
                f"relation, siamese, baseline)"
            )
        if adapt_steps is not None:
            if not hasattr(self.learner, "eval_inner_steps"):
                raise FastAdaptError(
                    f"{self.config.learner.name} takes no test-time gradient steps; drop adapt_steps (--adapt-steps)"
                )
            if isinstance(adapt_steps, bool) or not isinstance(adapt_steps, int) or adapt_steps < 1:
                raise FastAdaptError(f"adapt_steps must be a positive integer, got {adapt_steps!r}")
            self.learner.eval_inner_steps = adapt_steps
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels], dtype=torch.long)
        return AdaptedTask(self, x, y, classes)


class AdaptedTask:
    """A model adapted to one support set. Adaptation is rerun for each `predict` call on the
    queries given, as in evaluation: transductive learners (MAML with batch-statistics BN)
    condition on the whole query batch, so pass the queries together."""

    def __init__(self, model: FewShotModel, support_x: torch.Tensor, support_y: torch.Tensor, classes: list | None):
        self.model, self.support_x, self.support_y, self.classes = model, support_x, support_y, classes

    def _outputs(self, queries: Items) -> torch.Tensor:
        q = self.model.inputs(queries)
        ways = len(self.classes) if self.classes is not None else None
        shots = None
        if ways:
            counts = torch.bincount(self.support_y, minlength=ways)
            shots = int(counts[0]) if bool((counts == counts[0]).all()) else None
        episode = Episode(self.support_x, self.support_y, q, None, ways=ways, shots=shots, info={})
        learner = self.model.learner
        learner.eval()
        # exactly as the evaluator calls it: each learner manages gradients for its own adaptation
        return learner.predict(episode.to(self.model.device)).detach().cpu()

    def predict_proba(self, queries: Items) -> np.ndarray:
        """(n_queries, n_classes) class probabilities, columns in `classes` order: the softmax of the
        learner's query scores (Matching Networks' scores are log-probabilities already)."""
        if self.classes is None:
            raise FastAdaptError("predict_proba is for classification runs; use predict for regression")
        return torch.softmax(self._outputs(queries).double(), -1).numpy()

    def predict(self, queries: Items) -> list:
        """The predicted label of each query (classification) or the predicted values (regression)."""
        out = self._outputs(queries)
        if self.classes is None:
            return out.numpy()
        return [self.classes[i] for i in out.argmax(-1).tolist()]


def load(run_dir: str | Path, data_root: str | Path | None = None) -> FewShotModel:
    """A trained run folder as a `FewShotModel` (its selected weights; no training data needed).
    Raises FastAdaptError if the folder is not a finished run, or is an RL run."""
    from .trainer import load_run

    trainer = load_run(run_dir, data_root=data_root)
    if trainer.learner.problem == "rl":  # its tasks are environments: nothing here can adapt it
        raise FastAdaptError(
            f"{run_dir} is an RL run: it adapts from rollouts in its environments, not from labelled "
            f"inputs; test it with `fastadapt eval {run_dir}` (fastadapt.load takes classification and "
            f"regression runs)"
        )
    return FewShotModel(trainer, Path(run_dir))
