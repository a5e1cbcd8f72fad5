"""chainflow: durable, blockchain-aware payment workflows.

See README.md for the tour; the public API is what this module exports, and
everything under the subpackages is private.

The engine is built in layers; a module imports only from its own layer or the ones
below it, never above, and no two modules import each other in a circle
(``tests/test_layers.py`` walks every import and fails on a back-edge):

1. base: ``errors``, ``clock``, ``retry``, ``lease``, ``lograte``, ``metrics``,
   ``events``, ``logs``, ``threads``, ``states``, ``tracing`` -- values and small
   mechanisms every layer shares;
2. ``storage``: the schema and its migrations, the connector, the payload codec, the
   runs store (runs, journal, attempts, signals, workers), the group-commit writer
   and the ``Database`` gateway -- the only code that speaks SQL about runs;
3. ``chain``: the chain-agnostic submission protocol, the adapter protocols, the
   submissions and headers stores, finality, the head tracker and reorg handling;
   it asks the run it submits for through ``chain.scope.RunScope``;
4. ``runtime``: what executes runs -- the worker, the executor, the per-run context,
   the group committer, the workflow registry and the schedules' loop; it reaches the app through
   ``runtime.worker.WorkerHost``;
5. ``replay``: time travel -- a run's history in memory, workflow code executed
   against it (``ReplayScope``), the report, fork points;
6. ``client``: ``Chainflow``, the registry of workflows plus the client half
   (start, signal, cancel, status, replay, fork, export, ...);
7. the entry points: ``cli`` (and ``__main__``, ``python -m chainflow``), ``testing``, ``ui``
   (the web dashboard) and this module.
"""

from .chain.adapter import (
    Broadcaster,
    BroadcastOutcome,
    BroadcastResult,
    ChainAdapter,
    ChainReader,
    Coin,
    CoinSource,
    Header,
    NonceSource,
    Receipt,
    SignedTx,
    Simulation,
    Simulator,
    TxBuilder,
)
from .chain.finality import Confirmations, Finality, Finalized, Safe
from .chain.reorg import REORG_SIGNAL
from .chain.tracker_config import Batching, TrackerConfig
from .client.app import (
    AttemptRecord,
    Chainflow,
    JournalEntry,
    ReorgEvent,
    RunHandle,
    RunStatus,
    ScheduleStatus,
)
from .clock import MAX_DURATION, Clock, FakeClock, SystemClock
from .errors import (
    ChainflowError,
    ConfigurationError,
    DatabaseLockedError,
    DuplicateWorkflowError,
    IdempotencyConflictError,
    InputValidationError,
    LeaseLostError,
    NonDeterminismError,
    PayloadError,
    RunCancelled,
    RunDeadLettered,
    RunFinishedError,
    RunForkedError,
    RunNotDeadLetteredError,
    RunNotFoundError,
    ScheduleNotFoundError,
    StepError,
    StepTimeout,
    SubmissionFailedError,
    TxRevertedError,
    UnknownWorkflowError,
    WaitTimeout,
    WorkflowTimeout,
)
from .events import Event
from .replay.history import History
from .replay.replayer import Override
from .replay.report import Change, RunReport, SweepReport
from .retry import Retry
from .runtime.context import Context
from .states import EntryState, RunState, SubmissionState

__all__ = [
    "MAX_DURATION", "REORG_SIGNAL", "Batching", "Confirmations", "Finality", "Finalized", "Safe", "TrackerConfig", "ReorgEvent",
    "EntryState", "RunState", "SubmissionState",
    "Broadcaster", "ChainReader", "Coin", "CoinSource", "NonceSource", "TxBuilder",
    "AttemptRecord", "BroadcastOutcome", "BroadcastResult", "ChainAdapter", "Chainflow", "ChainflowError",
    "Clock", "ConfigurationError", "Context", "DatabaseLockedError", "DuplicateWorkflowError", "FakeClock", "Header",
    "IdempotencyConflictError", "InputValidationError", "JournalEntry", "LeaseLostError",
    "NonDeterminismError", "PayloadError", "Receipt", "Retry", "RunCancelled", "RunDeadLettered", "RunFinishedError",
    "RunForkedError", "RunHandle", "RunNotDeadLetteredError", "RunNotFoundError", "RunStatus", "SignedTx", "StepError", "StepTimeout",
    "SubmissionFailedError", "SystemClock", "TxRevertedError", "UnknownWorkflowError", "WaitTimeout",
    "WorkflowTimeout", "Event", "ScheduleNotFoundError", "ScheduleStatus", "Change", "History", "Override", "RunReport", "Simulation", "Simulator", "SweepReport",
]
