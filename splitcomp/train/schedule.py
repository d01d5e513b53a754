"""How long a training run is: a fixed step count, or one fitted to a time budget.

``--minutes`` runs time their first steps and fit the total to what is left, again every 20
steps (a shared machine changes speed), so the run ends when the budget does and the cosine
learning-rate schedule still reaches its end.
"""

from __future__ import annotations

import math
import time

import torch


class StepBudget:
    """The total steps of a run from ``start_step``: ``total`` when known (epochs, a resumed
    run), else fitted to ``minutes``."""

    def __init__(self, total: int | None, minutes: float | None, start_step: int = 0) -> None:
        self.total, self.minutes, self.start = total, minutes, start_step
        self.fixed = total is not None
        self.t0 = time.perf_counter()

    def update(self, step: int) -> int | None:
        """The total as of ``step`` (None until a time-budgeted run has timed 20 steps)."""
        done = step - self.start
        if self.minutes and not self.fixed and done >= 20 and done % 20 == 0:
            elapsed = time.perf_counter() - self.t0
            left = max(self.minutes * 60 - elapsed, 0.0)
            self.total = step + max(int(left / (elapsed / done)), 1 if done >= 40 else 20)
        return self.total

    def running(self, step: int) -> bool:
        return self.total is None or step < self.total

    def fraction(self, step: int) -> float:
        return step / self.total if self.total else 0.0

    def lr_scale(self, step: int) -> float:
        """Cosine decay from 1 to 0 over the run."""
        return 0.5 * (1 + math.cos(math.pi * min(self.fraction(step), 1.0)))

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int, base_lr: float) -> None:
        """Every parameter group's learning rate at ``step`` (its ``base_lr`` entry, else
        ``base_lr``, times the cosine scale)."""
        scale = self.lr_scale(step)
        for group in optimizer.param_groups:
            group["lr"] = group.get("base_lr", base_lr) * scale


class Batches:
    """Index batches over ``n`` items in a seeded random order, reshuffled whenever fewer
    than a batch remain."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.g = n, batch_size, generator
        self.order, self.pos = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx
