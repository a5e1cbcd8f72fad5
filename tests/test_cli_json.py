"""The scriptable CLI: every read command's ``--json`` parsed, ``show`` with decoded
values and the run's submissions (hashes, coins, confirmations so far vs required),
``reorgs`` and ``heads``, ``nonces`` without --app saying what it needs, and piped
output through ``python -m chainflow`` never cut to 80 columns.

The data is real: a payment run through the engine, worker and tracker on the
in-memory UTXO chain (``chainflow.testing``), then a reorg the tracker records."""

from __future__ import annotations

import asyncio
import decimal
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import chainflow as cf
from chainflow.cli import cli
from chainflow.testing import CallLog

from .engine._util import running_worker
from .fakechain.test_utxo_protocol import PAYEE, Rig

ROOT = Path(__file__).resolve().parent.parent
EVM_PAYEE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
WEI = 10**30 + 7  # past 2**53: exact only as digits


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Rig]]:
    """A database holding one completed payment run, its final submission, and a reorg."""
    tmp = tmp_path_factory.mktemp("clijson")
    url = f"sqlite:///{tmp}/cli.db"
    rig = Rig(url, CallLog(tmp / "ledger.log"))
    rig.chain.fund("wallet", 100_000)

    async def scenario() -> str:
        await rig.step()
        handle = rig.app.start("pay_flow", {"id": "order-1", "sats": 5_000, "wei": WEI,
                                            "price": decimal.Decimal("1.10"), "memo": b"\x01\xff"})
        async with running_worker(rig.app, track=False):
            await rig.until_done(handle.id, what="the payment to finish")
        rig.chain.mine(3)
        await rig.step()
        rig.chain.reorg(1)
        await rig.step()
        return handle.id

    run_id = asyncio.run(scenario())
    yield url, run_id, rig
    rig.close()


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def as_json(url: str, *args: str) -> Any:
    return json.loads(invoke("--database-url", url, *args, "--json").stdout)


def test_show_json_has_decoded_values_and_the_submission(paid: tuple[str, str, Rig]) -> None:
    url, run_id, rig = paid
    shown = as_json(url, "show", run_id)
    run = shown["run"]
    assert run["status"] == "completed"
    assert run["input"]["wei"] == WEI  # an exact JSON number, not {"__cf__": "int", ...}
    assert run["input"]["price"] == "1.10" and run["input"]["memo"] == "0x01ff"
    assert "__cf__" not in json.dumps(shown)
    steps = [(e["step"], e["kind"], e["status"]) for e in shown["journal"]]
    assert ("pay", "submit", "ok") in steps and ("credit", "step", "ok") in steps
    sub, = shown["submissions"]
    stored = rig.sub("order-1")
    assert sub["state"] == "final" and sub["chain"] == "fakebtc" and sub["idempotency_key"] == "order-1"
    assert sub["tx_hashes"] == [a.tx_hash for a in rig.attempts(stored.id)]
    assert sub["mined_tx"] == stored.tx_hash and stored.tx_hash in sub["tx_hashes"]
    assert sub["coins"] == rig.reserved(stored.id) and sub["coins"]
    assert sub["nonce"] is None  # a UTXO chain: coins, not a nonce
    assert sub["required"] == "2 confirmations"
    assert sub["confirmations"] == rig.chain.height - sub["block_number"] + 1 >= 2
    assert any(value == 5_000 for _, value in rig.chain.payments(PAYEE))


def test_show_text_is_decoded_and_lists_hashes_and_confirmations(paid: tuple[str, str, Rig]) -> None:
    url, run_id, rig = paid
    out = invoke("--database-url", url, "show", run_id).stdout
    assert str(WEI) in out and "__cf__" not in out
    stored = rig.sub("order-1")
    assert stored.tx_hash in out
    assert "of 2 confirmations" in out and "final" in out


def test_show_names_each_submission_by_its_step_label(db_url: str) -> None:
    """A submission's step is stored "branch\\x1fkey"; show prints it as the journal's
    label ("send", "b/send"), in the table and in --json, not the control character."""
    from adapters.evm import EvmChain, LocalSigner
    from devnet import InProcessEVM

    with InProcessEVM(block_time=0.05) as net:
        chain = EvmChain("local", rpc=net.rpc_url, signer=LocalSigner.from_key(net.accounts()[0].private_key))
        app = cf.Chainflow(db_url, chains=[chain], tracker=cf.TrackerConfig(poll_interval=0.02))

        @app.workflow("pay")
        async def pay(ctx: cf.Context, _: Any) -> list[str]:
            async def send(value: int) -> str:
                return (await ctx.submit("send", chain="local", tx={"to": EVM_PAYEE, "value": value},
                                         idempotency_key=f"k-{value}", finality=cf.Confirmations(1))).tx_hash

            return [await send(1), await ctx.branch("b", send(2))]

        async def scenario() -> str:
            app.ensure_schema()
            run = await app.astart("pay", None)
            async with running_worker(app):
                st = await app.await_run(run.id, timeout=60)
            await chain.aclose()
            assert st.status == cf.RunState.COMPLETED, st.error
            return run.id

        try:
            run_id = asyncio.run(scenario())
        finally:
            app.engine.dispose()
    assert sorted(s["step"] for s in as_json(db_url, "show", run_id)["submissions"]) == ["b/send", "send"]
    table = invoke("--database-url", db_url, "show", run_id).stdout
    assert "\x1f" not in table and "b/send" in table


def test_runs_reorgs_heads_coins_json(paid: tuple[str, str, Rig]) -> None:
    url, run_id, rig = paid
    runs = as_json(url, "runs")
    assert [r["id"] for r in runs] == [run_id] and runs[0]["output"]["tx"] == rig.sub("order-1").tx_hash
    reorg, = as_json(url, "reorgs")
    assert reorg["chain"] == "fakebtc" and reorg["depth"] == 1 and reorg["detected_at"].endswith("+00:00")
    assert as_json(url, "reorgs", "--chain", "other") == []
    head, = as_json(url, "heads")
    assert head["chain"] == "fakebtc" and head["followed"] == rig.chain.height
    assert head["node"] is None and head["lag_blocks"] is None  # no --app: the database's view only
    assert as_json(url, "coins") == []  # the payment's coins are spent and final: none is held


def test_nonces_without_app_says_what_it_needs_and_json_stays_clean(paid: tuple[str, str, Rig]) -> None:
    url, _, _ = paid
    result = invoke("--database-url", url, "nonces", "--json")
    assert json.loads(result.stdout) == []  # a UTXO chain allocates no nonce
    assert "--app MODULE:ATTR" in result.stderr and "configures its chains" in result.stderr
    text = invoke("--database-url", url, "nonces")
    assert "no nonce allocated yet" in text.stdout


def test_piped_output_through_python_m_chainflow_is_not_cut(paid: tuple[str, str, Rig]) -> None:
    url, run_id, rig = paid
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "chainflow", "--database-url", url, "show", run_id],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    rows = [line for line in done.stdout.splitlines() if "credit" in line and "│" in line]
    assert rows and max(len(line) for line in rows) > 80, done.stdout  # one row, not wrapped at 80
    assert "…" not in rows[0].split("│")[3]  # the step name cell is whole
    # a cell is not clipped either: the submit's whole receipt, to its last field
    paid_row = next(line for line in done.stdout.splitlines() if "│ pay " in line and "submit" in line)
    receipt = json.loads(paid_row.split("│")[8])
    assert receipt["tx_hash"] == rig.sub("order-1").tx_hash and "…" not in paid_row
