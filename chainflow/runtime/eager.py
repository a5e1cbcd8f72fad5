"""Start a coroutine at once, in the caller's turn of the event loop.

A workflow whose steps finish without suspending (async steps that return at once,
commits the group commit makes inline) runs to its end in one call; as a task it
would pay a loop round to start and two more to tell its driver it is done, a tenth
of such a run's cost.  Python 3.12's eager tasks do this; chainflow supports 3.11.

A coroutine that suspends continues as an ordinary task, in the same context copy, so
what it sets in context variables stays its own either way.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` until it first suspends; a future of its outcome (a task once it has
    suspended).  Must be called on the running event loop."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except asyncio.CancelledError:
        done = loop.create_future()
        done.cancel()
        return done
    except Exception as exc:  # noqa: BLE001 - the future carries it, as a task would
        done = loop.create_future()
        done.set_exception(exc)
        return done
    return loop.create_task(_resume(coro, yielded), context=context)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, None, T]:
    """Hand the task what ``coro`` yielded when it suspended (a future to wait on), then
    let the task drive ``coro`` itself."""
    while True:
        try:
            yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task (a cancellation): coro's to handle
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        return (yield from coro)  # type: ignore[misc]
