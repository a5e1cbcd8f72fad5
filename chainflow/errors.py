"""Every exception chainflow raises on purpose.

Each names the thing at fault (workflow, run, step, field) because these errors
surface in a web backend's logs or a CLI one-liner, far from the code that caused them.
"""

from __future__ import annotations

import json
import traceback


class ChainflowError(Exception):
    """Base class: catch this to handle any engine-raised error."""


class ConfigurationError(ChainflowError):
    """Bad engine configuration: malformed database URL, unknown chain..."""


class DatabaseLockedError(ChainflowError):
    """Another connection held the SQLite file's lock for longer than the busy timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(
            f"SQLite database {path!r} is locked by another connection; gave up after waiting {timeout:g}s "
            "(Chainflow(..., busy_timeout=SECONDS) sets how long to wait)"
        )
        self.path, self.timeout = path, timeout


class DuplicateWorkflowError(ChainflowError):
    def __init__(self, name: str) -> None:
        super().__init__(f"workflow {name!r} is already registered")
        self.name = name


class ScheduleNotFoundError(ChainflowError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r} (a worker of the app that declares it records it)")
        self.name = name


class UnknownWorkflowError(ChainflowError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no workflow named {name!r} is registered")
        self.name = name


class RunNotFoundError(ChainflowError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class RunFinishedError(ChainflowError):
    """A signal or cancel reached a run that can no longer act on it."""

    def __init__(self, run_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} run {run_id!r}: it is already {status}")
        self.run_id, self.status, self.action = run_id, status, action


class RunNotDeadLetteredError(ChainflowError):
    """``retry`` reached a run that was not dead-lettered: only a run the engine gave
    up on may be put back, a live or normally finished one must not run again."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"cannot retry run {run_id!r}: it is {status}, and only a dead_lettered run can be retried")
        self.run_id, self.status = run_id, status


class RunForkedError(RunNotDeadLetteredError):
    """``retry`` reached a dead-lettered run that was forked: the fork executes the steps
    after its fork point, and the retried run would execute them too."""

    def __init__(self, run_id: str, forks: list[str]) -> None:
        ChainflowError.__init__(self, f"cannot retry run {run_id!r}: it was forked as {', '.join(forks)}, which "
                                      "executes the steps after the fork point; retrying it would execute them twice")
        self.run_id, self.status, self.forks = run_id, "dead_lettered", forks


class RunDeadLettered(ChainflowError):
    """The reason recorded on a run given up after too many recoveries (a worker died
    or lost its lease while running it, or its executor crashed, each time)."""

    def __init__(self, run_id: str, recoveries: int, max_recoveries: int, crash: BaseException | None = None) -> None:
        cause = (f"its executor crashed ({type(crash).__name__}: {crash})" if crash is not None
                 else "its worker died or lost its lease while running it")
        super().__init__(
            f"run {run_id!r} dead-lettered after {recoveries} recoveries (max_recoveries={max_recoveries}); "
            f"last: {cause}; its compensations were not run; `chainflow retry {run_id}` puts it back to pending"
        )
        self.run_id, self.recoveries, self.max_recoveries = run_id, recoveries, max_recoveries


class InputValidationError(ChainflowError):
    def __init__(self, workflow: str, detail: str) -> None:
        super().__init__(f"invalid input for workflow {workflow!r}: {detail}")
        self.workflow, self.detail = workflow, detail


class IdempotencyConflictError(ChainflowError):
    def __init__(self, key: str, run_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} already started run {run_id!r} with a different "
            "workflow or input"
        )
        self.key, self.run_id = key, run_id


class PayloadError(ChainflowError):
    """A value cannot be stored exactly (unsupported type, broken payload)."""


class NonDeterminismError(ChainflowError):
    """Replay asked for a different operation than the journal holds at that position,
    or the code ended before asking for one the journal holds (``actual`` "nothing: ...")."""

    def __init__(self, run_id: str, branch: str, position: int, expected: str, actual: str) -> None:
        where = f"branch {branch!r} " if branch else ""
        super().__init__(
            f"non-determinism in run {run_id!r}: at {where}position {position} the journal "
            f"holds {expected!r} but the workflow code now asks for {actual!r}; if the code changed while "
            f"this run was in flight, keep the old path for it behind ctx.patched('<change-id>') "
            f"(docs/operations.md, Versioning)"
        )
        self.run_id, self.branch, self.position = run_id, branch, position
        self.expected, self.actual = expected, actual


class StepError(ChainflowError):
    """A step failed terminally (retries exhausted or non-retryable).

    Workflow code always sees this type (never the step's own exception class) so that
    a first execution and a replay from the journal behave identically.
    """

    def __init__(self, step: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {error_type}: {message}")
        self.step, self.error_type, self.message, self.attempts = step, error_type, message, attempts


class StepTimeout(ChainflowError, TimeoutError):
    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(f"step {step!r} timed out after {seconds}s")
        self.step, self.seconds = step, seconds


class CodeRaisedBaseException(ChainflowError):
    """A step's or workflow's own code raised ``SystemExit``, ``KeyboardInterrupt`` or
    an ``asyncio.CancelledError`` nobody asked for: its run's failure, like any error.
    asyncio would re-raise the first two out of the event loop, ending the worker and
    every run in flight (again at each restart), and take the third for a cancel."""

    def __init__(self, raised: BaseException, where: str) -> None:
        super().__init__(f"{type(raised).__name__}({str(raised)!r}) raised by {where}")


class WaitTimeout(ChainflowError, TimeoutError):
    """``ctx.wait_for`` reached its timeout without a signal."""

    def __init__(self, signal: str) -> None:
        super().__init__(f"no signal {signal!r} arrived before the timeout")
        self.signal = signal


class WorkflowTimeout(ChainflowError, TimeoutError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} exceeded its workflow timeout")
        self.run_id = run_id


class RunCancelled(ChainflowError):
    """Raised inside workflow code at the first operation after a cancel request."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was cancelled")
        self.run_id = run_id


class LeaseLostError(ChainflowError):
    """This worker's lease on a run was taken over; it must stop writing (fencing)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"lease on run {run_id!r} was lost to another worker")
        self.run_id = run_id


class TxRevertedError(ChainflowError):
    """An on-chain transaction (or its gas estimate) reverted; the nonce may be spent."""

    def __init__(self, step: str, reason: str | None, tx_hash: str | None = None) -> None:
        where = f" (tx {tx_hash})" if tx_hash else ""
        super().__init__(f"transaction of step {step!r} reverted{where}: {reason or 'no reason given'}")
        self.step, self.reason, self.tx_hash = step, reason, tx_hash


class SubmissionFailedError(ChainflowError):
    """A submission can never be included (nonce taken by a foreign tx, permanent rejection)."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"submission of step {step!r} failed: {detail}")
        self.step, self.detail = step, detail


def type_name(value: object) -> str:
    """``module.Qualname`` of ``value``'s type: how errors are named in the journal, in a
    ``StepError`` and in logs, alike live and on replay."""
    return f"{type(value).__module__}.{type(value).__qualname__}"


def describe_error(exc: BaseException) -> str:
    """An exception as the journal and the runs table store it (JSON: type, message,
    the traceback's tail): what a replay re-raises and an operator reads."""
    return json.dumps(
        {
            "type": type_name(exc),
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
        }
    )


def error_parts(text: str | None) -> tuple[str, str]:
    """(type, message) of a stored error."""
    data = json.loads(text) if text else {}
    return data.get("type", "Error"), data.get("message", "")


def summary(error: BaseException | str | None) -> str | None:
    """``Type: message`` on one line (an exception, or a stored error's JSON): what a
    log line and a lifecycle hook carry, never the traceback."""
    if error is None or error == "":
        return None
    if isinstance(error, BaseException):
        kind, message = type(error).__name__, str(error)
    else:
        kind, message = error_parts(error)
        kind = kind.rpartition(".")[2]
    message = " ".join(message.split())
    return f"{kind}: {message}" if message else kind
