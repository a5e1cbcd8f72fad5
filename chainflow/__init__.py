"""chainflow: durable, blockchain-aware payment workflows.

See README.md for the tour; the public API is what this module exports.
"""

from .adapter import BroadcastOutcome, BroadcastResult, ChainAdapter, Header, Receipt, SignedTx
from .app import AttemptRecord, Chainflow, JournalEntry, ReorgEvent, RunHandle, RunStatus
from .clock import MAX_DURATION, Clock, FakeClock, SystemClock
from .context import Context
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
    RunNotDeadLetteredError,
    RunNotFoundError,
    StepError,
    StepTimeout,
    SubmissionFailedError,
    TxRevertedError,
    UnknownWorkflowError,
    WaitTimeout,
    WorkflowTimeout,
)
from .finality import Confirmations, Finalized, Safe
from .reorg import REORG_SIGNAL
from .retry import Retry
from .states import EntryState, RunState, SubmissionState
from .tracker_config import TrackerConfig

__all__ = [
    "MAX_DURATION", "REORG_SIGNAL", "Confirmations", "Finalized", "Safe", "TrackerConfig", "ReorgEvent",
    "EntryState", "RunState", "SubmissionState",
    "AttemptRecord", "BroadcastOutcome", "BroadcastResult", "ChainAdapter", "Chainflow", "ChainflowError",
    "Clock", "ConfigurationError", "Context", "DatabaseLockedError", "DuplicateWorkflowError", "FakeClock", "Header",
    "IdempotencyConflictError", "InputValidationError", "JournalEntry", "LeaseLostError",
    "NonDeterminismError", "PayloadError", "Receipt", "Retry", "RunCancelled", "RunDeadLettered", "RunFinishedError",
    "RunHandle", "RunNotDeadLetteredError", "RunNotFoundError", "RunStatus", "SignedTx", "StepError", "StepTimeout",
    "SubmissionFailedError", "SystemClock", "TxRevertedError", "UnknownWorkflowError", "WaitTimeout",
    "WorkflowTimeout",
]
