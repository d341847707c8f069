"""TensorBoard event files beside `metrics.csv`: the same rows, under the same tags for every learner.

`tensorboard --logdir runs/` then shows every run (and every tuning trial, whose run folders sit
under the study folder) in one view. The event file is derived from the trainer's history the way
`metrics.csv` is: a run resumed from a checkpoint rewrites it from the checkpointed history, so
rows logged after that checkpoint by the interrupted process are dropped from TensorBoard exactly
as they are from `metrics.csv` (no duplicate or orphaned steps, whatever reader is used).

Tags (x axis: the meta-training step):

| tag | value | metrics.csv column |
| --- | --- | --- |
| `train/loss` | mean meta-training loss over the logging window | train_loss |
| `train/metric` | mean training-task primary metric over the window | train_metric |
| `train/lr` | outer-loop learning rate used at that step | lr |
| `val/metric` | mean primary metric on the fixed validation episodes | val_metric |
| `val/ci95` | its 95% CI half-width | val_ci95 |

The primary metric's name and direction (accuracy: higher is better, mse: lower) are written
once as the text summary `run/metric`.
"""

from __future__ import annotations

import time
from pathlib import Path

#: metrics.csv column -> TensorBoard tag.
TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_metric": "train/metric",
    "lr": "train/lr",
    "val_metric": "val/metric",
    "val_ci95": "val/ci95",
}
EVENT_PREFIX = "events.out.tfevents."


class TensorBoardLog:
    """One run's TensorBoard event file in `run_dir`, written where `metrics.csv` is written.

    `history` is the trainer's list of metrics rows so far (dicts with `step` and the keys of
    `TAGS`; a missing or None value is not written). It is replayed into a new event file and the
    folder's older event files (a previous, interrupted process's) are deleted, so the file holds
    exactly the rows of `metrics.csv`. Replayed rows keep their spacing in training time
    (`elapsed_s`); their wall-clock times end now.
    """

    def __init__(self, run_dir: str | Path, history: list[dict], metric: str, higher_is_better: bool):
        from torch.utils.tensorboard import SummaryWriter  # imported on use: tensorboard is slow to import

        self.run_dir = Path(run_dir)
        old = sorted(self.run_dir.glob(EVENT_PREFIX + "*"))
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        direction = "higher" if higher_is_better else "lower"
        self.writer.add_text("run/metric", f"{metric} ({direction} is better)", global_step=0)
        now, last = time.time(), (history[-1].get("elapsed_s") or 0.0) if history else 0.0
        for row in history:
            self._add(row, walltime=now - (last - (row.get("elapsed_s") or last)))
        self.writer.flush()
        for path in old:  # the new file is not among them (SummaryWriter creates it on construction)
            path.unlink(missing_ok=True)

    def _add(self, row: dict, walltime: float | None = None) -> None:
        for column, tag in TAGS.items():
            value = row.get(column)
            if value is not None:
                self.writer.add_scalar(tag, float(value), int(row["step"]), walltime=walltime)

    def write(self, row: dict) -> None:
        """Add one metrics row (the one just appended to metrics.csv) and flush it to disk."""
        self._add(row)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run folder's event files as {tag: [(step, value), ...]} in step order,
    read back with TensorBoard's own EventAccumulator (for tests and scripts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }
