"""SetFit's recipe (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"):
contrastive fine-tuning of the sentence encoder on sentence pairs sampled from the support set,
then a logistic-regression head on the adapted embeddings.

Each round draws, for every support sentence, one partner of the same intent (target cosine 1)
and one of another intent (target 0) (`fastadapt.text.pairs.sample_pairs`: sampled, never
enumerated, O(pairs) memory); the encoder's top `train_layers` layers minimise the squared error
between the pair's cosine similarity and its target (SetFit's CosineSimilarityLoss). Token-id
episodes only; the adaptation is `fastadapt.text.finetune.adapt_contrastive`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import LEARNERS
from ...text.adapting import EncoderAdaptingLearner, EncoderArgs
from ...text.finetune import adapt_contrastive
from ..base import require


@LEARNERS.register("contrastive-finetune")
class ContrastiveFinetune(EncoderAdaptingLearner):
    @dataclass
    class Args(EncoderArgs):
        epochs: int = 1  # passes over the sampled pairs (SetFit: 1)
        pair_iterations: int = 5  # rounds of one positive + one negative pair per support sentence
        lr: float = 2e-5  # AdamW step size of the encoder's layers (SetFit's body learning rate)

        def __post_init__(self):
            super().__post_init__()
            require(self.pair_iterations >= 1, "pair_iterations", self.pair_iterations, ">= 1")

    def adapt(self, ids, labels, ways):
        return adapt_contrastive(
            self.encoder, self.params(), ids, labels, ways, self.pad_id, self.settings(), self.args.seed
        )
