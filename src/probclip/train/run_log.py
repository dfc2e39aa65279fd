"""Run logging: a progress bar on a terminal (plain lines otherwise), a JSONL record of every logged step and
event, and TensorBoard scalars. Only the main process logs."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..jsonsafe import json_safe

__all__ = ["RunLogger", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunLogger:
    """Writes ``log.jsonl`` (one JSON object per logged step or event) and TensorBoard scalars under ``output_dir``,
    and shows progress.

    Args:
        output_dir: run directory (created).
        total_steps: steps of the run (for the bar and the ETA).
        progress: ``bar`` (tqdm), ``plain`` (one line per logged step), ``none``, or ``auto`` (bar on a terminal).
        tensorboard: write TensorBoard event files to ``output_dir/tensorboard``.
        enabled: False on non-main processes (everything becomes a no-op).
        start_step: first step (resumed runs).
    """

    def __init__(self, output_dir: str | Path, total_steps: int, progress: str = "auto", tensorboard: bool = True,
                 enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = Path(output_dir) / "log.jsonl"
        self._bar = None
        self._writer = None
        self._file = None
        self._start_time = time.perf_counter()
        self._start_step = start_step
        self.mode = "none"
        if not enabled:
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        mode = progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        if mode == "bar":
            from tqdm.auto import tqdm  # only when a bar is shown

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy; only with run.tensorboard

            self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def event(self, kind: str, **fields: Any) -> None:
        """Record a non-step event (``nonfinite``, ``bad_samples``, ``checkpoint``, ``eval``, ``resume``...)."""
        if not self.enabled:
            return
        record = {"event": kind, **fields}
        self._file.write(json.dumps(json_safe(record, nonfinite="text")) + "\n")
        self._file.flush()
        if kind in ("nonfinite", "bad_samples", "resume", "stop") or self.mode == "plain":
            self.message(f"[{kind}] " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    def message(self, text: str) -> None:
        """A human-readable line (through the bar when one is shown)."""
        if not self.enabled or self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, record: dict, advance: int) -> None:
        """Log one step ``record`` (must hold ``step``; numbers go to TensorBoard) and move the bar by ``advance``."""
        if not self.enabled:
            return
        self._file.write(json.dumps(json_safe(record, nonfinite="text")) + "\n")
        self._file.flush()
        step = int(record["step"])
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"train/{key}", value, step)
        done = step - self._start_step
        elapsed = time.perf_counter() - self._start_time
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                  sps=f"{record.get('samples_per_s', 0.0):.1f}", refresh=False)
            self._bar.update(advance)
        elif self.mode == "plain":
            self.message(
                f"step {step}/{self.total_steps}  loss {record.get('loss', float('nan')):.4f}  "
                f"lr {record.get('lr', 0.0):.3g}  {record.get('samples_per_s', 0.0):.1f} samples/s  "
                f"eta {format_seconds(eta)}"
            )

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """Numbers of ``values`` as TensorBoard scalars under ``prefix/``."""
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None
