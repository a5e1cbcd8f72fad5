"""Per-step retry policy.

The delay before each attempt is computed once and journaled with the failed attempt,
so jitter does not make a replay disagree with the original run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from .clock import to_seconds


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
        # refused here, where the policy is written, not at the first failure: a NaN
        # delay would make the run's next attempt time compare false forever
        attempts = self.max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool):
            raise TypeError(f"Retry.max_attempts must be an int, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"Retry.max_attempts must be >= 1, got {attempts!r}")
        if self.backoff not in ("exponential", "linear", "constant"):
            raise ValueError(f"Retry.backoff must be exponential, linear or constant, got {self.backoff!r}")
        to_seconds(self.initial, "Retry.initial")
        to_seconds(self.max_delay, "Retry.max_delay")
        for what, value, least in (("multiplier", self.multiplier, 1.0), ("jitter", self.jitter, 0.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"Retry.{what} must be a number, got {value!r}")
            if not math.isfinite(value) or value < least:
                raise ValueError(f"Retry.{what} must be a finite number >= {least:g}, got {value!r}")
        kinds = self.non_retryable
        if not isinstance(kinds, tuple) or not all(isinstance(k, type) and issubclass(k, BaseException)
                                                    for k in kinds):
            raise TypeError(f"Retry.non_retryable must be a tuple of exception classes, got {kinds!r}")

    def retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, self.non_retryable)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure."""
        n = max(1, failed_attempts)
        if self.backoff == "exponential":
            base = self._exponential(n)
        elif self.backoff == "linear":
            base = self.initial * n
        else:
            base = self.initial
        base = min(base, self.max_delay)
        if self.jitter:
            base += base * self.jitter * random.random()
        return min(base, self.max_delay)

    def _exponential(self, n: int) -> float:
        """``initial * multiplier ** (n - 1)``, saturating at ``max_delay``: whether the cap
        is reached is decided in logarithms, so a millionth attempt never computes a
        power that overflows a float."""
        if self.initial == 0 or self.initial >= self.max_delay:
            return float(min(self.initial, self.max_delay))
        if (n - 1) * math.log(self.multiplier) >= math.log(self.max_delay) - math.log(self.initial):
            return float(self.max_delay)
        return float(self.initial * self.multiplier ** (n - 1))


DEFAULT_RETRY = Retry()


def check_policy(retry: Retry | None, what: str) -> None:
    """Refuse a ``retry=`` that is neither None nor a Retry where it is given: taken for a
    policy, it failed only at the operation's first failure, after the operation ran."""
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"{what} must be a chainflow.Retry, got {retry!r}")
