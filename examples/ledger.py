"""A tiny off-chain ledger the examples post to, so a reorg's compensations are visible."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, account TEXT, ref TEXT, amount TEXT)"
        )

    def post(self, account: str, ref: str, amount: int) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO entries (account, ref, amount) VALUES (?, ?, ?)", (account, ref, str(amount))
            )
            return int(cur.lastrowid or 0)

    def balance(self, account: str) -> int:
        with self._lock:
            rows = self._db.execute("SELECT amount FROM entries WHERE account = ?", (account,)).fetchall()
        return sum(int(a) for (a,) in rows)
