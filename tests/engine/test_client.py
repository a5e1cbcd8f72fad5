"""The client half: start (idempotent, validated), signal, cancel, status, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pydantic
import pytest

import chainflow as cf
from chainflow.storage import codec
from chainflow.storage.schema import runs
from chainflow.testing import WorkflowTester

from ._util import wait_until


def run_count(app: cf.Chainflow) -> int:
    return len(app.runs(limit=10_000))


def register_echo(app: cf.Chainflow) -> None:
    @app.workflow("echo")
    async def echo(ctx: cf.Context, value: Any) -> Any:
        await ctx.wait_for("go")
        return value


def test_idempotent_start_returns_the_same_run(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    first = app.start("echo", {"amount": 10}, idempotency_key="order-1")
    again = app.start("echo", {"amount": 10}, idempotency_key="order-1")
    assert first.created and not again.created
    assert again.id == first.id and again.workflow == "echo"
    other = app.start("echo", {"amount": 10}, idempotency_key="order-2")
    assert other.created and other.id != first.id
    assert run_count(app) == 2


def test_idempotency_conflict_changes_nothing(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    first = app.start("echo", {"amount": 10}, idempotency_key="order-1")
    before = app.status(first.id)
    with pytest.raises(cf.IdempotencyConflictError) as info:
        app.start("echo", {"amount": 11}, idempotency_key="order-1")
    assert info.value.key == "order-1" and info.value.run_id == first.id
    assert "order-1" in str(info.value)
    assert run_count(app) == 1
    assert app.status(first.id) == before
    assert app.status(first.id).input == {"amount": 10}


def test_idempotent_start_with_an_equal_input_in_another_key_order(make_app: Any) -> None:
    """A retried request re-serialised (its dicts' keys in another order) is the same
    input: it conflicted, the hash being over the order-preserving text."""
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    first = app.start("echo", {"order": 7, "amount": 10, "fees": {1: "a", 2: "b"}}, idempotency_key="order-7")
    again = app.start("echo", {"fees": {2: "b", 1: "a"}, "amount": 10, "order": 7}, idempotency_key="order-7")
    assert again.id == first.id and not again.created
    with pytest.raises(cf.IdempotencyConflictError):
        app.start("echo", {"fees": {2: "a", 1: "b"}, "amount": 10, "order": 7}, idempotency_key="order-7")
    assert run_count(app) == 1


def test_idempotent_start_of_a_run_stored_with_the_order_preserving_hash(make_app: Any) -> None:
    """Runs started before the hash was canonical store the hash of the input text as
    written: a retry with that same input still finds its run."""
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    value = {"order": 8, "amount": 10}
    first = app.start("echo", value, idempotency_key="order-8")
    legacy = hashlib.sha256(f"echo\0{codec.dumps(value)}".encode()).hexdigest()
    with app.engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == first.id).values(input_hash=legacy))
    again = app.start("echo", value, idempotency_key="order-8")
    assert again.id == first.id and not again.created
    with pytest.raises(cf.IdempotencyConflictError):
        app.start("echo", {"order": 8, "amount": 11}, idempotency_key="order-8")


@pytest.mark.parametrize("limit", [-1, 0, 2.7, True, "5"])
def test_runs_and_reorgs_refuse_a_limit_that_is_not_a_count(make_app: Any, limit: Any) -> None:
    """runs(limit=-1) listed every run on SQLite (LIMIT -1 is no limit there) and raised
    a raw DataError on Postgres; like the CLI's --limit, a limit is an int >= 1."""
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    app.start("echo", 1)
    with pytest.raises(ValueError, match=f"limit must be an int >= 1, got {limit!r}"):
        app.runs(limit=limit)
    with pytest.raises(ValueError, match=f"limit must be an int >= 1, got {limit!r}"):
        app.reorgs(limit=limit)
    assert len(app.runs(limit=1)) == 1 and app.reorgs(limit=1) == []


def test_start_records_only_an_input_it_reads_back(make_app: Any) -> None:
    """150 nested int-key dicts passed the encoder's depth limit but not the decoder's:
    the run was written, then neither status() nor a worker could read its input."""
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    value: Any = "leaf"
    for _ in range(150):
        value = {1: value}
    handle = app.start("echo", value)
    assert app.status(handle.id).input == value


async def test_idempotent_start_after_the_run_finished(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("once")
    async def once(ctx: cf.Context, x: int) -> int:
        return x * 2

    first = await app.astart("once", 21, idempotency_key="k")
    await WorkflowTester(app).run_until_idle()
    again = await app.astart("once", 21, idempotency_key="k")
    assert (again.id, again.created) == (first.id, False)
    assert app.status(first.id).output == 42
    assert run_count(app) == 1


async def test_start_through_a_local_workers_group_commit(make_app: Any) -> None:
    """astart on the loop of a running worker writes the run through that worker's
    group commit, born claimed; idempotency keys answer exactly as the ordinary start."""
    app = make_app()

    @app.workflow("double")
    async def double(ctx: cf.Context, x: int) -> int:
        return await ctx.step("twice", lambda: x * 2)

    stop = asyncio.Event()
    worker = app.worker(concurrency=4, poll_interval=60)  # no claim poll would find them
    running = asyncio.create_task(worker.run(stop))
    await wait_until(lambda: worker.loop is not None, what="the worker to start")
    try:
        first = await app.astart("double", 21, idempotency_key="k")
        plain = await app.astart("double", 5)
        assert first.created and plain.created
        again = await app.astart("double", 21, idempotency_key="k")
        assert (again.id, again.created) == (first.id, False)
        with pytest.raises(cf.IdempotencyConflictError):
            await app.astart("double", 22, idempotency_key="k")
        assert (await app.await_run(first.id, timeout=10)).output == 42
        assert (await app.await_run(plain.id, timeout=10)).output == 10
    finally:
        stop.set()
        await running
    assert run_count(app) == 2
    assert app.status(first.id).output == 42


async def test_await_run_of_a_finish_later_undone_polls_instead_of_spinning(make_app: Any) -> None:
    """A finish this process heard of can be undone (a reorg reopens the run): waiting
    then falls back to the poll interval, not to a tight loop of status reads."""
    app = make_app()
    register_echo(app)
    run_id = app.start("echo", 1).id
    app.finished(run_id)  # as a worker announces a finish; the run is still pending
    reads = 0
    status = app.astatus

    async def counted(rid: str) -> cf.RunStatus:
        nonlocal reads
        reads += 1
        return await status(rid)

    app.astatus = counted  # type: ignore[method-assign]
    with pytest.raises(TimeoutError, match="still pending"):
        await app.await_run(run_id, timeout=0.5, poll=0.1)
    assert reads <= 8


class Payment(pydantic.BaseModel):
    account: str
    cents: int = pydantic.Field(gt=0)


@dataclasses.dataclass
class Refund:
    payment_id: str
    cents: int


@dataclasses.dataclass(frozen=True)
class Address:
    chain: str
    to: str


@dataclasses.dataclass
class Payout:
    """Dataclasses nested in each position a payout uses them."""

    dest: Address
    amount: int
    fallback: Address | None = None
    legs: list[Address] = dataclasses.field(default_factory=list)
    by_chain: dict[str, Address] = dataclasses.field(default_factory=dict)
    hop: tuple[Address, int] | None = None


PAYOUT = Payout(Address("evm", "0xabc"), 5, fallback=Address("btc", "bc1q"), legs=[Address("evm", "0x1")],
                by_chain={"btc": Address("btc", "bc1x")}, hop=(Address("evm", "0x2"), 7))


def register_typed(app: cf.Chainflow) -> None:
    @app.workflow("pay")
    async def pay(ctx: cf.Context, p: Payment) -> dict[str, Any]:
        assert isinstance(p, Payment)
        return {"account": p.account, "cents": p.cents}

    @app.workflow("refund")
    async def refund(ctx: cf.Context, r: Refund) -> list[Any]:
        assert isinstance(r, Refund)
        return [r.payment_id, r.cents]

    @app.workflow("payout")
    async def payout(ctx: cf.Context, p: Payout) -> str:
        return repr(p)


@pytest.mark.parametrize(
    "workflow,bad",
    [
        ("pay", {"account": "a"}),  # missing field
        ("pay", {"account": "a", "cents": -5}),  # constraint
        ("pay", {"account": "a", "cents": "lots"}),  # wrong type
        ("pay", "not a dict"),
        ("refund", {"payment_id": "p"}),  # missing field
        ("refund", {"payment_id": "p", "cents": 1, "extra": True}),  # unknown field
        ("refund", 42),
    ],
)
def test_bad_input_rejected_before_anything_is_recorded(make_app: Any, workflow: str, bad: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_typed(app)
    with pytest.raises(cf.InputValidationError) as info:
        app.start(workflow, bad, idempotency_key="k1")
    assert info.value.workflow == workflow
    assert workflow in str(info.value)
    assert run_count(app) == 0
    # the key was not consumed either
    assert app.start(workflow, {"account": "a", "cents": 5} if workflow == "pay" else
                     {"payment_id": "p", "cents": 5}, idempotency_key="k1").created


DEST = {"chain": "evm", "to": "0xabc"}


@pytest.mark.parametrize(
    ("workflow", "bad", "culprit"),
    [
        ("refund", {"payment_id": "p", "cents": 1.5}, '"cents"'),
        ("refund", {"payment_id": "p", "cents": 1.0}, '"cents"'),  # a float rounds amounts past 2**53
        ("refund", {"payment_id": "p", "cents": True}, '"cents"'),  # True is not 1 cent
        ("refund", {"payment_id": "p", "cents": "5"}, '"cents"'),
        ("refund", {"payment_id": 7, "cents": 5}, '"payment_id"'),
        ("refund", Refund("p", 2.5), '"cents"'),  # type: ignore[arg-type]  # its constructor checks nothing
        ("payout", {"dest": {"chain": "evm", "to": 5}, "amount": 1}, '"dest.to"'),
        ("payout", {"dest": {"chain": "evm"}, "amount": 1}, '"dest.to"'),
        ("payout", {"dest": {**DEST, "memo": "x"}, "amount": 1}, '"memo"'),
        ("payout", {"dest": DEST, "amount": 1, "legs": [DEST, {**DEST, "to": 1.5}]}, '"legs.to"'),
        ("payout", {"dest": DEST, "amount": 1, "by_chain": {"evm": {**DEST, "to": None}}}, '"by_chain.to"'),
        ("payout", {"dest": DEST, "amount": 1, "fallback": "0xabc"}, '"fallback"'),
        ("payout", {"dest": DEST, "amount": 1, "hop": (DEST, 7.0)}, '"hop"'),
        ("payout", {"dest": DEST, "amount": [1]}, '"amount"'),
    ],
)
def test_dataclass_input_of_a_wrong_type_is_refused_naming_the_field(make_app: Any, workflow: str, bad: Any,
                                                                      culprit: str) -> None:
    """README: ``start`` validates a dataclass input.  Its fields are checked against
    their types, nested ones too, without coercion: amounts are ints."""
    app = make_app(clock=cf.FakeClock())
    register_typed(app)
    with pytest.raises(cf.InputValidationError) as info:
        app.start(workflow, bad)
    assert culprit in info.value.detail
    assert run_count(app) == 0


async def test_valid_typed_input_reaches_the_workflow(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_typed(app)
    tester = WorkflowTester(app)
    paid = await tester.run("pay", {"account": "acc", "cents": "250"})  # coerced by pydantic
    assert paid.status == "completed", paid.error
    assert paid.output == {"account": "acc", "cents": 250}
    assert paid.run.input == {"account": "acc", "cents": 250}  # stored in validated form
    refunded = await tester.run("refund", Refund("p-1", 99))
    assert refunded.output == ["p-1", 99]


@pytest.mark.parametrize("given", [PAYOUT, dataclasses.asdict(PAYOUT)], ids=["instance", "dict"])
async def test_nested_dataclass_input_reaches_the_workflow_as_declared(make_app: Any, given: Any) -> None:
    """The input is stored as plain data (``dataclasses.asdict``); the worker rebuilds each
    dataclass in it from the type hints, not only the outer one."""
    app = make_app(clock=cf.FakeClock())
    register_typed(app)
    paid = await WorkflowTester(app).run("payout", given)
    assert paid.status == "completed", paid.error
    assert paid.output == repr(PAYOUT)
    assert paid.run.input == dataclasses.asdict(PAYOUT)


def test_unknown_workflow(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    with pytest.raises(cf.UnknownWorkflowError, match="'nope'"):
        app.start("nope", {})
    assert run_count(app) == 0


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://user@localhost/db",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///x.db?synchronous=SOMETIMES",
        "postgresql+nosuchdriver://u@h/db",
    ],
)
def test_malformed_database_url(url: str) -> None:
    with pytest.raises(cf.ConfigurationError):
        cf.Chainflow(url)


def test_unreachable_database_is_a_configuration_error(tmp_path: Path) -> None:
    app = cf.Chainflow("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    with pytest.raises(cf.ConfigurationError, match="cannot reach"):
        app.ensure_schema()


def test_duplicate_workflow_name(make_app: Any) -> None:
    app = make_app()
    register_echo(app)
    with pytest.raises(cf.DuplicateWorkflowError, match="'echo'"):
        register_echo(app)

    async def two(ctx: cf.Context, x: Any) -> None:
        pass

    app.workflow("two")(two)
    with pytest.raises(cf.DuplicateWorkflowError):
        app.workflow("two")(two)
    assert app.registry.names() == ["echo", "two"]


def test_signal_and_cancel_to_finished_or_missing_run(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    run_id = app.start("echo", 1).id
    app.cancel(run_id)
    asyncio.run(WorkflowTester(app).run_until_idle())
    assert app.status(run_id).status == "cancelled"
    with pytest.raises(cf.RunFinishedError, match="already cancelled"):
        app.signal(run_id, "go", None)
    with pytest.raises(cf.RunFinishedError):
        app.cancel(run_id)
    with pytest.raises(cf.RunNotFoundError):
        app.signal("missing", "go", None)
    with pytest.raises(cf.RunNotFoundError):
        app.status("missing")


def test_client_api_from_plain_sync_code_without_worker(make_app: Any) -> None:
    """A Django/Flask view: no event loop, no worker, just calls."""
    app = make_app()
    register_echo(app)
    handle = app.start("echo", {"x": 1}, idempotency_key="view-1")
    assert isinstance(handle, cf.RunHandle) and handle.created
    st = app.status(handle.id)
    assert st.status == "pending" and st.input == {"x": 1} and not st.done
    app.signal(handle.id, "go", {"ok": True})
    app.cancel(handle.id)
    st = app.status(handle.id)
    assert st.cancel_requested and st.status == "pending"
    assert app.journal(handle.id) == []
    assert app.attempts(handle.id) == []
    assert [r.id for r in app.runs(workflow="echo")] == [handle.id]
    assert app.runs(status="completed") == []
    with pytest.raises(TimeoutError):
        app.wait(handle.id, timeout=0.1)


def test_concurrent_idempotent_starts_create_one_run(make_app: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    app.ensure_schema()
    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda _: app.start("echo", {"n": 1}, idempotency_key="same"), range(16)))
    assert len({h.id for h in handles}) == 1
    assert sum(h.created for h in handles) == 1
    assert run_count(app) == 1


async def test_an_awaiter_giving_up_leaves_the_others_waiting(make_app: Any) -> None:
    """Each await_run listens on its own future: one cancelled (or timed out) caller does
    not cancel the wake-up of another caller awaiting the same run."""
    app = make_app(clock=cf.FakeClock())
    register_echo(app)
    run_id = app.start("echo", 3).id
    impatient = asyncio.create_task(app.await_run(run_id, poll=60))
    patient = asyncio.create_task(app.await_run(run_id, poll=60))
    await asyncio.sleep(0.05)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    app.signal(run_id, "go")
    await WorkflowTester(app).run_until_idle()  # its worker announces the finish
    assert (await asyncio.wait_for(patient, 10)).output == 3
    assert not app._waiters  # nobody left listening
