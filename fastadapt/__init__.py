"""fastadapt: fast, reproducible meta-learning in PyTorch.

from fastadapt import load_config, Trainer
config = load_config("protonet-omniglot-quick", ["train.steps=500"])
result = Trainer(config, "runs/demo").fit()      # meta-train, then test on fixed episodes
print(result["accuracy"], result["ci95"])

model = fastadapt.load("runs/demo")              # apply it to your own few-shot task
task = model.adapt(["cat1.png", "dog1.png"], ["cat", "dog"])
task.predict(["query.png"])
"""

from .api import AdaptedTask, FewShotModel, load
from .config import Config, load_config, preset_names
from .data.episode import Episode
from .errors import FastAdaptError
from .evaluate import ci95, evaluate
from .learners import build_learner
from .learners.base import Learner
from .learners.optimization.maml import adapt
from .registry import BACKBONES, DATASETS, LEARNERS
from .trainer import Trainer, evaluate_run, load_run

__version__ = "0.1.0"
__all__ = [
    "AdaptedTask",
    "FewShotModel",
    "load",
    "Config",
    "Episode",
    "FastAdaptError",
    "Learner",
    "Trainer",
    "adapt",
    "build_learner",
    "ci95",
    "evaluate",
    "evaluate_run",
    "load_config",
    "load_run",
    "preset_names",
    "BACKBONES",
    "DATASETS",
    "LEARNERS",
]
