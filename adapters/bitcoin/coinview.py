"""The payout wallet's coins, followed block by block.

A ``scantxoutset`` reads the whole UTXO set: seconds on regtest, minutes on mainnet,
and one at a time per node.  So it runs once, when the view starts (and again only
after a reorg deeper than the blocks it remembers); after that each new block is read
once (``getblock`` with transactions) and applied: the wallet's outputs it creates are
added, the outpoints it spends removed.  Each applied block keeps what it changed, so
a reorg is walked back block by block to the fork point before the new branch is
applied: coins created in an orphaned block stop being spendable, coins it spent come
back, until the new branch says otherwise.  The cost per block is constant in the
number of payouts in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chainflow.chain.adapter import Coin

from .rpc import BitcoinRpc
from .transaction import parse_outpoint
from .values import satoshis

COINBASE_MATURITY = 100


@dataclass(frozen=True)
class Utxo:
    value: int
    height: int
    coinbase: bool


@dataclass
class _Applied:
    """One block as applied: enough to take it back.  A coin the block both created and
    spent is in neither (the engine spends only mined coins, but another wallet holding
    the same keys may chain spends in the mempool): taking the block back must not
    bring it back."""

    hash: str
    height: int
    created: set[str] = field(default_factory=set)
    spent: dict[str, Utxo] = field(default_factory=dict)


class CoinView:
    """The wallet's UTXOs in the node's active chain, kept current by ``refresh``.

    ``owns(script_hex)`` tells the wallet's output scripts; ``scan()`` returns a full
    ``scantxoutset`` result for the wallet; ``rpc`` is the node.  ``depth`` is
    how many applied blocks are remembered for walking a reorg back."""

    def __init__(self, rpc: BitcoinRpc, scan: Callable[[], Awaitable[dict[str, Any]]], owns: Callable[[str], bool],
                 depth: int = 288) -> None:
        self._rpc, self._scan, self._owns, self._depth = rpc, scan, owns, depth
        self._utxos: dict[str, Utxo] = {}
        self._blocks: list[_Applied] = []  # applied since the scan, oldest first (at most ``depth``)
        self._tip: tuple[str, int] | None = None  # (hash, height) the view is at
        self._base: tuple[str, int] | None = None  # what the oldest remembered block stands on
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def coins(self) -> list[Coin]:
        """Spendable coins at the node's best block: mature, in the active chain."""
        await self.refresh()
        assert self._tip is not None
        tip = self._tip[1]
        return sorted((Coin(op, u.value) for op, u in self._utxos.items()
                       if not u.coinbase or tip - u.height + 1 >= COINBASE_MATURITY),
                      key=lambda c: parse_outpoint(c.outpoint))

    async def refresh(self) -> None:
        # one walk at a time: the runs of a worker ask for coins concurrently, and two
        # walks interleaving would apply or undo a block twice
        async with self._lock():
            best = str(await self._rpc.call("getbestblockhash"))
            if self._tip is not None and self._tip[0] == best:
                return
            if self._tip is None or not await self._follow(best):
                await self._rescan()

    def _lock(self) -> asyncio.Lock:
        """One walk (or scan) at a time per event loop: an asyncio lock belongs to one
        loop, and an adapter may outlive one (each CLI command runs its own)."""
        loop = asyncio.get_running_loop()
        for ended in [lp for lp in self._locks if lp.is_closed()]:
            del self._locks[ended]
        return self._locks.setdefault(loop, asyncio.Lock())

    async def _follow(self, best: str) -> bool:
        """Walk from the view's tip to ``best``: back over orphaned blocks, forward over
        new ones.  False when the fork is below what the view remembers."""
        assert self._tip is not None
        header = await self._rpc.call("getblockheader", best)
        branch: list[tuple[str, int]] = []  # the new chain's blocks above the fork, newest first

        def step_back() -> Awaitable[Any]:
            branch.append((str(header["hash"]), int(header["height"])))
            return self._rpc.call("getblockheader", header["previousblockhash"])

        while int(header["height"]) > self._tip[1]:
            if len(branch) >= self._depth:
                return False
            header = await step_back()
        while self._tip[1] > int(header["height"]):  # the new chain is shorter (invalidateblock)
            if not self._undo():
                return False
        while str(header["hash"]) != self._tip[0]:  # same height, different blocks: a reorg
            if not self._undo():
                return False
            header = await step_back()
        for block_hash, height in reversed(branch):
            await self._apply(block_hash, height)
        return True

    def _undo(self) -> bool:
        """Take the newest applied block back; False when none is remembered."""
        if not self._blocks:
            return False
        block = self._blocks.pop()
        for outpoint in block.created:
            self._utxos.pop(outpoint, None)
        self._utxos.update(block.spent)
        self._tip = (self._blocks[-1].hash, self._blocks[-1].height) if self._blocks else self._base
        return True

    async def _apply(self, block_hash: str, height: int) -> None:
        block = await self._rpc.call("getblock", block_hash, 2)
        applied = _Applied(block_hash, height)
        for tx in block.get("tx") or []:
            txid = str(tx["txid"])
            coinbase = False
            for vin in tx.get("vin") or []:
                if "coinbase" in vin:
                    coinbase = True
                    continue
                outpoint = f"{vin['txid']}:{int(vin['vout'])}"
                if outpoint in applied.created:
                    applied.created.discard(outpoint)
                    del self._utxos[outpoint]
                elif outpoint in self._utxos:
                    applied.spent[outpoint] = self._utxos.pop(outpoint)
            for vout in tx.get("vout") or []:
                if self._owns(str(vout["scriptPubKey"]["hex"])):
                    outpoint = f"{txid}:{int(vout['n'])}"
                    self._utxos[outpoint] = Utxo(satoshis(vout["value"], f"output {outpoint}"), height, coinbase)
                    applied.created.add(outpoint)
        self._blocks.append(applied)
        if len(self._blocks) > self._depth:  # forgotten: a reorg below here means a rescan
            oldest = self._blocks.pop(0)
            self._base = (oldest.hash, oldest.height)
        self._tip = (block_hash, height)

    async def _rescan(self) -> None:
        scan = await self._scan()
        utxos = {}
        for u in scan.get("unspents") or []:
            outpoint = f"{u['txid']}:{int(u['vout'])}"
            coinbase = bool(u.get("coinbase", False))
            if "coinbase" not in u and int(u["height"]) > int(scan["height"]) - COINBASE_MATURITY:
                # nodes before 0.21 leave the flag out: ask the transaction itself
                tx = await self._rpc.call("getrawtransaction", str(u["txid"]), True)
                coinbase = any("coinbase" in vin for vin in tx.get("vin") or [])
            utxos[outpoint] = Utxo(satoshis(u["amount"], f"scantxoutset amount of {outpoint}"), int(u["height"]),
                                   coinbase)
        self._utxos, self._blocks = utxos, []
        self._base = self._tip = (str(scan["bestblock"]), int(scan["height"]))
