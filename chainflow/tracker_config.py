"""Tunables of the confirmation tracker (kept apart so the app can take them without
importing the tracker machinery)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackerConfig:
    poll_interval: float = 1.0
    window: int = 128  # headers kept; deeper than any finality depth in use
    start_depth: int = 16  # how far back a fresh tracker starts
    rebroadcast_blocks: int = 3  # not seen for this many blocks: re-broadcast same bytes
    bump_blocks: int = 6  # still pending after this many blocks: same-nonce fee bump
    bump_factor: float = 1.125  # the common node replacement rule (12.5%)
    max_bumps: int = 5  # cap on replacements per submission
    stuck_batch: int = 32  # stuck submissions handled per head, bounding RPC
