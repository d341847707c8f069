"""Fine-tuning the sentence encoder itself on the support set, through a linear head
initialised by logistic regression ("LP-FT": Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR).

For each support set: the frozen embeddings give a logistic-regression head (L-BFGS); then the
encoder's top `train_layers` layers and the head are trained together with cross-entropy for a
few epochs of AdamW at a small step size (optionally with label smoothing, Szegedy et al. 2016).
Starting from the probe's head means the first gradients refine the features rather than
fitting a random head. Token-id episodes only (`data.args.representation: tokens`); the
adaptation is `fastadapt.text.finetune.adapt_cross_entropy`, a pure function of (params, data).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import LEARNERS
from ...text.adapting import EncoderAdaptingLearner, EncoderArgs
from ...text.finetune import adapt_cross_entropy
from ..base import require


@LEARNERS.register("encoder-finetune")
class EncoderFinetune(EncoderAdaptingLearner):
    @dataclass
    class Args(EncoderArgs):
        head_lr: float = 1e-3  # AdamW step size of the head (initialised by logistic regression)
        label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)

        def __post_init__(self):
            super().__post_init__()
            require(self.head_lr > 0, "head_lr", self.head_lr, "> 0")
            require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")

    def adapt(self, ids, labels, ways):
        return adapt_cross_entropy(
            self.encoder, self.params(), ids, labels, ways, self.pad_id, self.settings(), self.args.seed
        )
