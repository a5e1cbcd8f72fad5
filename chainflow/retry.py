"""Per-step retry policy.

The delay before each attempt is computed once and journaled with the failed attempt,
so jitter does not make a replay disagree with the original run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 3
    backoff: Literal["exponential", "linear", "constant"] = "exponential"
    initial: float = 0.5
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1  # fraction of the delay added at random, 0 disables
    non_retryable: tuple[type[BaseException], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff not in ("exponential", "linear", "constant"):
            raise ValueError(f"Retry.backoff must be exponential, linear or constant, got {self.backoff!r}")
        if self.initial < 0 or self.max_delay < 0 or self.jitter < 0:
            raise ValueError("Retry.initial, max_delay and jitter must be >= 0")

    def retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, self.non_retryable)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure."""
        n = max(1, failed_attempts)
        if self.backoff == "exponential":
            base = self.initial * self.multiplier ** (n - 1)
        elif self.backoff == "linear":
            base = self.initial * n
        else:
            base = self.initial
        base = min(base, self.max_delay)
        if self.jitter:
            base += base * self.jitter * random.random()
        return min(base, self.max_delay)


NO_RETRY = Retry(max_attempts=1)
DEFAULT_RETRY = Retry()
