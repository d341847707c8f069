"""Config parsing and validation, engine choice, atomic writes."""

import pytest
import torch

from fastadapt.config import load_config, load_raw, preset_names
from fastadapt.engine import ForkEngine, SerialEngine, make_engine
from fastadapt.errors import FastAdaptError
from fastadapt.learners.metric.protonet import ProtoNet
from fastadapt.learners.optimization.maml import MAML
from fastadapt.models.backbones import Conv4
from fastadapt.utils import atomic_write


def test_every_preset_parses_and_names_registered_parts():
    from fastadapt.registry import BACKBONES, DATASETS, LEARNERS

    for name in preset_names():
        config = load_config(name)
        assert config.name == name
        assert config.learner.name in LEARNERS and config.model.backbone in BACKBONES
        assert config.data.dataset in DATASETS


def test_overrides_parse_yaml_values_and_nested_keys():
    config = load_config(
        "maml-omniglot-5w1s",
        ["train.lr=1e-4", "data.val_split=null", "learner.args.inner_steps=5", "train.episodes.ways=20"],
    )
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)
    assert config.data.val_split is None
    assert config.learner.args["inner_steps"] == 5 and config.train.episodes.ways == 20
    # The preset's other settings survive, and the raw preset is not mutated.
    assert config.train.meta_batch == 32
    assert load_raw("maml-omniglot-5w1s")["train"]["lr"] == 0.001


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.episodes.wayz=3", "unknown setting train.episodes.wayz"),
        ("train.meta_batch=1.5", "train.meta_batch must be int"),
        ("train.episodes=3", "train.episodes must be a mapping"),
        ("eval.seed=true", "eval.seed must be int"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(FastAdaptError, match=message):
        load_config("protonet-omniglot-quick", [override])


def test_yaml_file_and_bad_yaml(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nlearner: {name: maml}\ntrain: {steps: 7}\n")
    config = load_config(str(good))
    assert (config.name, config.learner.name, config.train.steps) == ("mine", "maml", 7)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(FastAdaptError, match="not valid YAML"):
        load_config(str(bad))


def test_auto_engine_choice():
    cpu = torch.device("cpu")
    assert isinstance(make_engine("auto", ProtoNet(Conv4(bn="inductive")), cpu, 4, 2), SerialEngine)
    maml = MAML(Conv4(out_features=5, hidden=4))
    assert isinstance(make_engine("auto", maml, cpu, 1, 2), SerialEngine)
    engine = make_engine("auto", maml, cpu, 8, 2)
    try:
        assert isinstance(engine, ForkEngine) and engine.workers == 2
    finally:
        engine.close()
    with pytest.raises(FastAdaptError, match="stateless"):
        make_engine("fork", ProtoNet(Conv4(bn="inductive")), cpu, 4, 2)
    with pytest.raises(FastAdaptError, match="unknown engine"):
        make_engine("turbo", maml, cpu, 4, 2)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_paper_reference_follows_the_test_time_step_count():
    from fastadapt.scoring import applicable_reference as _applicable_reference

    config = load_config("maml-sinusoid-5shot")
    assert _applicable_reference(config, None, 5) == {"paper": config.reference["paper"], "mse": 0.67}
    assert _applicable_reference(config, None, 5, adapt_steps=1)["mse"] == 0.67  # the preset's own step count
    assert _applicable_reference(config, None, 5, adapt_steps=10)["mse"] == 0.35
    assert _applicable_reference(config, None, 5, adapt_steps=3) == {}  # the paper reports no 3-step figure
    assert _applicable_reference(config, None, 10, adapt_steps=10) == {}  # another K
    changed = load_config("maml-sinusoid-5shot", ["learner.args.inner_lr=0.02"])
    assert _applicable_reference(changed, None, 5, adapt_steps=10) == {}
    # validating (or not) picks which weights are tested; the test itself is the paper's
    for split in ("val", "null"):
        validated = load_config("maml-sinusoid-5shot", [f"data.val_split={split}", "train.val_every=7"])
        assert _applicable_reference(validated, None, 5)["mse"] == 0.67


def test_paper_reference_attaches_to_the_test_the_paper_ran_where_the_preset_names_it():
    """2D navigation: the MAML paper's figures are for the authors' 40 goals (split `paper`) and 40
    rollouts per step, not for the preset's own 100-goal, 20-rollout test."""
    from fastadapt.scoring import applicable_reference

    config = load_config("maml-trpo-point2d")
    assert config.reference["test"] == {"split": "paper", "shots": 40, "queries": 40}
    figures = applicable_reference(config, None, 40, split="paper", queries=40)
    assert figures["return_after_1"] == -11.7 and figures["return"] == -3.2 and "test" not in figures
    assert applicable_reference(config, None, 40, adapt_steps=2, split="paper", queries=40)["return"] == -3.3
    assert applicable_reference(config, None, 20, queries=20) == {}  # the preset's own test
    assert applicable_reference(config, None, 20, split="paper", queries=20) == {}  # the authors' goals, another batch
    assert applicable_reference(config, None, 40, split="test", queries=40) == {}  # the authors' batch, other goals
    assert applicable_reference(config, None, 40, split="paper", queries=3) == {}  # 3 scored rollouts: another estimate
    # the run's own test settings do not matter where the paper's test is named; its task does
    quick = load_config("maml-trpo-point2d", ["eval.shots=3", "eval.queries=3", "eval.episodes=5"])
    assert applicable_reference(quick, None, 40, split="paper", queries=40)["return"] == -3.2
    short = load_config("maml-trpo-point2d", ["data.args.horizon=8"])
    assert applicable_reference(short, None, 40, split="paper", queries=40) == {}


@pytest.mark.parametrize(
    "overrides, hinted",
    [
        # the preset's data.args.class_split is banking77's; --set data.args.path merges into it
        (["data.dataset=textfile", "data.args.path=x.csv"], True),
        (["learner.name=matching"], True),  # protonet's distance/scale are not matching networks'
        (["data.args.bogus=1"], False),  # the user's own key: the plain message
        (["data.dataset=textfile", "data.args.class_split=1"], False),  # set by the user, not the preset
    ],
)
def test_a_preset_key_left_behind_by_a_changed_component_says_where_it_came_from(overrides, hinted):
    from fastadapt.config_checks import check_config

    with pytest.raises(FastAdaptError, match="unknown setting") as info:
        check_config(load_config("protonet-banking77-5w1s", overrides))
    message = str(info.value)
    assert message.count("comes from the preset") == hinted and "\n" not in message  # said once
    if hinted:
        assert "replace the whole block, e.g. --set '" in message


def test_a_setting_added_later_keeps_earlier_runs_fingerprints_at_its_default():
    """Run folders written before `train.select_metric` existed must still load: at its default
    the fingerprint is the hash of the settings without it; any other value changes it."""
    import hashlib
    import json

    from fastadapt.checkpoint import UNFINGERPRINTED, settings_fingerprint

    config = load_config("maml-trpo-point2d")
    earlier = {k: v for k, v in config.to_dict().items() if k not in UNFINGERPRINTED}
    del earlier["train"]["select_metric"]  # the settings as an earlier version wrote them
    digest = hashlib.sha256(json.dumps(earlier, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert settings_fingerprint(config) == digest
    assert settings_fingerprint(load_config("maml-trpo-point2d", ["train.select_metric=return_after_1"])) != digest
