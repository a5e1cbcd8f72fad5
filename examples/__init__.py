"""Runnable example workflows (mint, transfer, payout)."""
