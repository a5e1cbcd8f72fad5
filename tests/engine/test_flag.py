"""The executor's flag: futures resolved when it is set, and waiters that give up."""

from __future__ import annotations

import asyncio

from chainflow.runtime.flag import Flag


async def test_waiters_resolve_when_set_and_at_once_once_set() -> None:
    flag = Flag()
    early = flag.future()
    gave_up = flag.future()
    gave_up.cancel()
    assert not early.done()
    flag.set()
    await asyncio.wait_for(early, 1)
    assert flag.is_set() and flag.future().done()  # set: a new waiter is resolved at once
    flag.clear()
    assert not flag.is_set() and not flag.future().done()


async def test_waiters_that_gave_up_are_not_kept() -> None:
    flag = Flag()
    for _ in range(1000):
        flag.future().cancel()  # as the executor drops its wait after each round
    assert len(flag._waiters) == 1
