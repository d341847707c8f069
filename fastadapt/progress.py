"""Training progress: a rich progress bar on a terminal, plain log lines elsewhere (CI logs)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, done, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self._bar = None

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]meta-train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, completed=self.done)
        return self

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def update(self, step: int, row: dict, metric: str) -> None:
        parts = [f"step {step}/{self.total}"]
        if row.get("train_loss") is not None:
            parts.append(f"loss {row['train_loss']:.4f}  train {metric} {row['train_metric']:.4f}")
        if row.get("val_metric") is not None:
            parts.append(f"val {metric} {row['val_metric']:.4f} ± {row['val_ci95']:.4f}")
        text = "  ".join(parts)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=text.split("  ", 1)[-1])
            if row.get("val_metric") is not None:
                self._bar.console.log(text)
        elif self.enabled:
            print(text, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
