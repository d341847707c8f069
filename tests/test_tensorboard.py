"""TensorBoard event files beside metrics.csv: read back with TensorBoard's own EventAccumulator,
they hold exactly metrics.csv's rows under the same tags for every learner, also after a run is
cut short between checkpoints and resumed."""

import csv
import math

import numpy as np
import pytest

from fastadapt.config import load_config
from fastadapt.tblog import EVENT_PREFIX, TAGS, read_scalars
from fastadapt.trainer import Trainer

# A few seconds of sinusoid training: a row every 5 steps, validation every 10, checkpoints every 20.
SHORT = [
    "train.steps=40",
    "train.meta_batch=2",
    "train.log_every=5",
    "train.val_every=10",
    "train.val_episodes=4",
    "train.checkpoint_every=20",
    "eval.episodes=4",
    "train.lr_schedule=cosine",  # a changing lr, so train/lr is checked step by step
]


def csv_columns(run_dir) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {column: [(step, value), ...]} for the columns that have a TensorBoard tag."""
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {
        column: [(int(r["step"]), float(r[column])) for r in rows if r[column] != ""]
        for column in TAGS
        if any(r[column] != "" for r in rows)
    }


def assert_events_match_csv(run_dir) -> None:
    events, columns = read_scalars(run_dir), csv_columns(run_dir)
    assert set(events) == {TAGS[c] for c in columns}
    for column, rows in columns.items():
        logged = events[TAGS[column]]
        assert [s for s, _ in logged] == [s for s, _ in rows], column
        # TensorBoard stores scalars as float32: equal after the same rounding
        np.testing.assert_array_equal([v for _, v in logged], np.float32([v for _, v in rows]), err_msg=column)


@pytest.mark.parametrize("preset", ["maml-sinusoid-5shot", "cnp-sinusoid-5shot"])
def test_event_file_holds_the_metrics_rows_under_common_tags(preset, tmp_path):
    config = load_config(preset, SHORT)
    Trainer(config, tmp_path, quiet=True).fit(test=False)
    assert len(list(tmp_path.glob(EVENT_PREFIX + "*"))) == 1
    assert_events_match_csv(tmp_path)
    # the same tags whatever the learner (MAML reports MSE via adaptation, CNP via its decoder)
    assert set(read_scalars(tmp_path)) == set(TAGS.values())
    steps = [s for s, _ in read_scalars(tmp_path)["val/metric"]]
    assert steps == [10, 20, 30, 40]


class Killed(Exception):
    """Stands for a kill between two checkpoints."""


def test_resumed_run_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    config = load_config("maml-sinusoid-5shot", SHORT)
    Trainer(config, tmp_path / "straight", quiet=True).fit(test=False)

    def kill_at_30(step, score):
        if step == 30:  # rows at 25 and 30 are logged; the last checkpoint is at 20
            raise Killed

    run = tmp_path / "interrupted"
    with pytest.raises(Killed):
        Trainer(config, run, quiet=True).fit(on_validation=kill_at_30, test=False)
    assert max(s for s, _ in read_scalars(run)["train/loss"]) == 30
    Trainer(config, run, quiet=True).fit(test=False)
    assert len(list(run.glob(EVENT_PREFIX + "*"))) == 1  # the interrupted process's file is replaced
    assert_events_match_csv(run)
    # and the values are those of the uninterrupted run (exact resume), each step once
    straight, resumed = read_scalars(tmp_path / "straight"), read_scalars(run)
    for tag in TAGS.values():
        assert [s for s, _ in resumed[tag]] == [s for s, _ in straight[tag]], tag
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(resumed[tag], straight[tag])), tag
