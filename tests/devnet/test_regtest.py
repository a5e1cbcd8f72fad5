"""RegtestNode on the installed bitcoind/litecoind: lifecycle, mining, funding, RBF, reorgs.

Every check reads the chain back from the node (gettxout, scantxoutset,
getblock, the mempool) rather than trusting what the helper returned.
"""

from __future__ import annotations

import base64
import http.client
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from devnet import DevnetError, RegtestNode, RegtestNotInstalled, RpcError, node_binary
from devnet.regtest import BITCOIND_ENV, FLAVORS, require_node_binary, sats_to_coins
from tests.conftest import require_regtest

pytestmark = pytest.mark.timeout(60)
regtest = pytest.mark.regtest


@pytest.fixture
def node(regtest_node: RegtestNode) -> RegtestNode:
    return regtest_node


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, data=b"{}", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # something answered (401 without credentials)
    except OSError:
        return False


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def _spent_by_chain(node: RegtestNode, txid: str) -> bool:
    """True when `txid` is confirmed on the active chain (its block is an ancestor of the tip)."""
    try:
        tx = node.rpc("getrawtransaction", txid, True)
    except RpcError:
        return False
    blockhash = tx.get("blockhash")
    return bool(blockhash) and node.rpc("getblockheader", blockhash)["confirmations"] > 0


def _unspent_sats(node: RegtestNode, txid: str, vout: int) -> int | None:
    out = node.rpc("gettxout", txid, vout, False)  # confirmed UTXO set only
    return None if out is None else int(out["value"] * 10**8)


# -- lifecycle -----------------------------------------------------------------


@regtest
def test_start_serves_loopback_rpc_with_a_funded_wallet_and_stop_is_fast() -> None:
    require_regtest()
    started = time.monotonic()
    node = RegtestNode().start()
    start_seconds = time.monotonic() - started
    url, bare_url, pid, datadir = node.rpc_url, f"http://127.0.0.1:{node.port}", node.pid, node.datadir
    assert url.startswith("http://chainflow:") and url.endswith(bare_url[len("http://"):])
    assert node.rpc("getblockchaininfo")["chain"] == "regtest"
    assert node.height() == 110  # 100 to mature + 10 spendable coinbases
    assert node.rpc("getbalance") == Decimal(500)  # exact Decimal, not a float
    assert node.flavor in ("bitcoin", "litecoin")
    assert node.network == FLAVORS[node.flavor].network
    assert node._password not in repr(node)
    started = time.monotonic()
    node.stop()  # no -rpcservertimeout wait: the helper's own calls leave no idle connection
    stop_seconds = time.monotonic() - started
    assert start_seconds < 15 and stop_seconds < 3, (start_seconds, stop_seconds)
    assert not _reachable(bare_url)
    assert pid is not None and _gone(pid)
    assert datadir is not None and not datadir.exists()  # temporary datadir removed
    node.stop()  # idempotent


@regtest
def test_someone_elses_idle_keep_alive_connection_delays_stop_only_until_the_kill() -> None:
    require_regtest()
    node = RegtestNode(stop_timeout=1).start()
    pid = node.pid
    assert pid is not None
    keep_alive = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    auth = base64.b64encode(urllib.parse.urlsplit(node.rpc_url).netloc.split("@")[0].encode()).decode()
    keep_alive.request("POST", "/", body=b'{"method":"getblockcount","params":[],"id":1}',
                       headers={"Authorization": f"Basic {auth}"})
    assert keep_alive.getresponse().read()  # left open and idle, as a pooled client would
    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 6  # stop_timeout, then SIGTERM's grace at most
    assert _gone(pid)
    keep_alive.close()


@regtest
def test_the_node_dies_with_the_interpreter_even_without_stop() -> None:
    require_regtest()
    script = "from devnet import RegtestNode; n = RegtestNode().start(); print(n.pid, n.datadir)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=root,
                         check=True)
    pid, datadir = out.stdout.split()
    assert _gone(int(pid)) and not Path(datadir).exists()


@regtest
def test_a_given_datadir_is_kept_and_reused_without_refunding(tmp_path: Path) -> None:
    require_regtest()
    with RegtestNode(datadir=tmp_path / "node") as node:
        node.mine(2)
        tip = node.rpc("getbestblockhash")
    with RegtestNode(datadir=tmp_path / "node") as again:
        assert again.rpc("getbestblockhash") == tip
        assert again.height() == 112  # the wallet was loaded, not funded a second time
        assert again.rpc("getbalance") > 0


@regtest
def test_a_node_that_cannot_start_is_killed_and_its_log_reported(tmp_path: Path) -> None:
    require_regtest()
    node = RegtestNode(datadir=tmp_path, extra_args=["-definitely-not-a-flag"], startup_timeout=10)
    with pytest.raises(DevnetError, match="definitely-not-a-flag"):
        node.start()
    assert not node.is_running()


def test_bad_options_are_rejected_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="wallet_coinbases"):
        RegtestNode(wallet_coinbases=0)
    with pytest.raises(ValueError, match="wallet"):
        RegtestNode(wallet="a/b")
    with pytest.raises(RuntimeError, match="not running"):
        RegtestNode().rpc("getblockcount")


# -- binary selection ------------------------------------------------------------


def _fake_node(directory: Path, name: str, version_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(0o755)
    return path


def test_binary_comes_from_the_env_var_then_bitcoind_then_litecoind_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    litecoind = _fake_node(tmp_path / "ltc", "litecoind", "Litecoin Core version v0.21.2.1")
    bitcoind = _fake_node(tmp_path / "btc", "bitcoind", "Bitcoin Core daemon version v28.1.0")
    monkeypatch.delenv(BITCOIND_ENV, raising=False)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert node_binary() is None
    with pytest.raises(RegtestNotInstalled, match="install-regtest.sh"):
        require_node_binary()

    monkeypatch.setenv("PATH", f"{tmp_path / 'ltc'}")
    found = node_binary()
    assert found is not None and found.path == litecoind
    assert found.flavor.name == "litecoin" and found.flavor.network == "litecoin-regtest"

    monkeypatch.setenv("PATH", f"{tmp_path / 'ltc'}:{tmp_path / 'btc'}")
    found = node_binary()
    assert found is not None and found.path == bitcoind  # bitcoind wins over litecoind
    assert found.flavor.name == "bitcoin" and found.flavor.network == "regtest"
    assert RegtestNode(binary=found).command(tmp_path, 1, 2)[0] == str(bitcoind)
    assert not any("mempoolreplacement" in arg or "mweb" in arg  # Core 28 rejects both flags
                   for arg in RegtestNode(binary=found).command(tmp_path, 1, 2))

    monkeypatch.setenv(BITCOIND_ENV, str(litecoind))
    found = node_binary()
    assert found is not None and found.path == litecoind  # the env var wins over PATH
    assert "-mempoolreplacement=1" in RegtestNode(binary=found).command(tmp_path, 1, 2)

    monkeypatch.setenv(BITCOIND_ENV, str(tmp_path / "nope"))
    with pytest.raises(RegtestNotInstalled, match="nope"):
        node_binary()

    monkeypatch.setenv(BITCOIND_ENV, str(_fake_node(tmp_path / "other", "geth", "Geth/v1.14")))
    with pytest.raises(RegtestNotInstalled, match="neither Bitcoin Core nor Litecoin Core"):
        node_binary()


def test_a_missing_node_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BITCOIND_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="install-regtest.sh"):
        require_regtest()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not a skip"):
        require_regtest()


def test_install_script_keeps_an_existing_node_and_refuses_a_bad_override(tmp_path: Path) -> None:
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "install-regtest.sh")
    fake = _fake_node(tmp_path, "bitcoind", "Bitcoin Core daemon version v28.1.0")
    for env in ({BITCOIND_ENV: str(fake)}, {"PATH": f"{tmp_path}:/usr/bin:/bin"}):
        started = time.monotonic()
        done = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30, check=False,
                              env={"PATH": "/usr/bin:/bin", **env})
        assert done.returncode == 0 and "already installed" in done.stdout and str(fake) in done.stdout, done
        assert time.monotonic() - started < 2
    bad = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30, check=False,
                         env={"PATH": "/usr/bin:/bin", BITCOIND_ENV: str(tmp_path / "nope")})
    assert bad.returncode == 1 and "nope is not an executable file" in bad.stderr


@regtest
def test_the_env_var_runs_the_named_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_regtest()
    real = node_binary()
    assert real is not None
    wrapper = tmp_path / "my-node"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "argv.log"}\nexec {real.path} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv(BITCOIND_ENV, str(wrapper))
    with RegtestNode() as node:
        assert node.flavor == real.flavor.name
        subversion = node.rpc("getnetworkinfo")["subversion"]
        assert ("Litecoin" in subversion) == (node.flavor == "litecoin")
    assert "-regtest" in (tmp_path / "argv.log").read_text()  # the node was started through it


# -- mining and funding -----------------------------------------------------------


@regtest
def test_mine_returns_the_new_tip_hashes_and_pays_to_an_address(node: RegtestNode) -> None:
    start = node.height()
    hashes = node.mine(3)
    assert node.height() == start + 3
    assert hashes == [node.rpc("getblockhash", h) for h in range(start + 1, start + 4)]
    address = node.rpc("getnewaddress")
    [block_hash] = node.mine(to=address)
    coinbase = node.rpc("getblock", block_hash, 2)["tx"][0]
    script = node.rpc("validateaddress", address)["scriptPubKey"]
    assert any(out["scriptPubKey"]["hex"] == script for out in coinbase["vout"])
    with pytest.raises(ValueError):
        node.mine(0)


@regtest
def test_mine_empty_leaves_the_mempool_waiting(node: RegtestNode) -> None:
    txid = node.wallet_send(node.rpc("getnewaddress"), 100_000)
    start = node.height()
    hashes = node.mine_empty(2)
    assert hashes == [node.rpc("getblockhash", h) for h in range(start + 1, start + 3)]
    assert all(node.rpc("getblock", h, 1)["tx"][1:] == [] for h in hashes), "only the coinbase"
    assert txid in node.mempool()
    (block_hash,) = node.mine(1)
    assert txid in node.rpc("getblock", block_hash, 1)["tx"]
    with pytest.raises(ValueError):
        node.mine_empty(0)


@regtest
def test_fund_pays_exact_sats_in_one_confirmed_output(node: RegtestNode) -> None:
    address = node.rpc("getnewaddress")
    height = node.height()
    outpoint = node.fund(address, 123_456_789)
    txid, vout = outpoint.split(":")
    assert node.height() == height + 1
    assert node.mempool() == []
    assert _unspent_sats(node, txid, int(vout)) == 123_456_789
    scan = node.rpc("scantxoutset", "start", [f"addr({address})"])
    assert [(u["txid"], u["vout"]) for u in scan["unspents"]] == [(txid, int(vout))]
    assert scan["total_amount"] == Decimal("1.23456789")


@regtest
def test_fund_and_wallet_send_reject_bad_input_before_any_coin_moves(node: RegtestNode) -> None:
    address = node.rpc("getnewaddress")
    height, balance = node.height(), node.rpc("getbalance")
    with pytest.raises(ValueError, match="not a valid address"):
        node.fund("bcrt1qnotanaddress", 1000)
    with pytest.raises(ValueError, match="sats"):
        node.fund(address, 0)
    with pytest.raises(TypeError, match="sats"):
        node.wallet_send(address, 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sats"):
        node.wallet_send(address, True)
    assert (node.height(), node.rpc("getbalance"), node.mempool()) == (height, balance, [])


@regtest
def test_rpc_errors_carry_the_nodes_code_message_and_method(node: RegtestNode) -> None:
    with pytest.raises(RpcError) as info:
        node.rpc("getblockhash", 10**6)
    assert info.value.code == -8 and info.value.method == "getblockhash"
    assert "getblockhash" in str(info.value) and "out of range" in str(info.value)


@regtest
def test_a_replaceable_wallet_payment_is_replaced_by_a_higher_fee_one(node: RegtestNode) -> None:
    address = node.rpc("getnewaddress")
    txid = node.wallet_send(address, 50_000)
    entry = node.rpc("getmempoolentry", txid)
    assert entry["bip125-replaceable"] is True
    bumped = node.rpc("bumpfee", txid)
    assert node.mempool() == [bumped["txid"]]
    assert bumped["fee"] > bumped["origfee"]
    node.mine()
    assert _spent_by_chain(node, bumped["txid"]) and not _spent_by_chain(node, txid)


# -- reorgs ----------------------------------------------------------------------


@regtest
def test_shallow_reorg_returns_the_tx_to_the_mempool_and_it_is_mined_again(node: RegtestNode) -> None:
    address = node.rpc("getnewaddress")
    txid, vout = node.fund(address, 70_000).split(":")
    tip, height = node.rpc("getbestblockhash"), node.height()

    result = node.reorg(1)

    assert node.height() == height + 1  # depth + 1 fork blocks
    assert result.old_hashes == [tip] and result.new_hashes[-1] == node.rpc("getbestblockhash")
    assert result.fork_height == height - 1 and txid in result.orphaned_txs
    assert node.rpc("getblockheader", tip)["confirmations"] == -1  # off the active chain
    assert node.mempool() == [txid]
    assert _unspent_sats(node, txid, int(vout)) is None
    node.mine()
    assert _unspent_sats(node, txid, int(vout)) == 70_000


@regtest
def test_reorg_can_re_mine_an_orphaned_tx_by_txid(node: RegtestNode) -> None:
    txid = node.fund(node.rpc("getnewaddress"), 80_000).split(":")[0]
    result = node.reorg(1, blocks=1, include=[txid])
    assert result.replayed_txs == [txid]
    assert node.rpc("getblock", result.new_hashes[0])["tx"][1:] == [txid]
    assert node.mempool() == []


@regtest
def test_reorg_with_a_double_spend_mined_on_the_fork(node: RegtestNode) -> None:
    payee, thief = node.rpc("getnewaddress"), node.rpc("getnewaddress")
    original = node.fund(payee, 90_000).split(":")[0]
    # The same wallet inputs, paid elsewhere instead: a conflicting transaction. The wallet
    # signs inputs it already spent only when told what they were (prevtxs).
    prevouts = []
    for vin in node.rpc("getrawtransaction", original, True)["vin"]:
        out = node.rpc("getrawtransaction", vin["txid"], True)["vout"][vin["vout"]]
        prevouts.append({"txid": vin["txid"], "vout": vin["vout"], "scriptPubKey": out["scriptPubKey"]["hex"],
                         "amount": out["value"]})
    total = sum(p["amount"] for p in prevouts)
    raw = node.rpc("createrawtransaction", [{"txid": p["txid"], "vout": p["vout"]} for p in prevouts],
                   [{thief: total - sats_to_coins(100_000)}])
    signed = node.rpc("signrawtransactionwithwallet", raw, prevouts)
    assert signed["complete"], signed
    double_spend = signed["hex"]
    ds_txid = node.rpc("decoderawtransaction", double_spend)["txid"]
    tip = node.rpc("getbestblockhash")

    with pytest.raises(DevnetError, match="original chain is restored"):
        node.reorg(2, include=[raw])  # unsigned: the fork block would be invalid
    assert node.rpc("getbestblockhash") == tip and _spent_by_chain(node, original)

    result = node.reorg(2, include=[double_spend])

    assert original in result.orphaned_txs and result.replayed_txs == []
    assert len(result.new_hashes) == 3
    assert node.rpc("getblock", result.new_hashes[0])["tx"][1:] == [ds_txid]
    assert _spent_by_chain(node, ds_txid) and not _spent_by_chain(node, original)
    assert original not in node.mempool()  # the conflict evicted it
    node.mine()
    assert not _spent_by_chain(node, original)


@regtest
def test_bad_reorg_requests_change_nothing(node: RegtestNode) -> None:
    tip = node.rpc("getbestblockhash")
    with pytest.raises(ValueError, match="neither a txid nor a raw"):
        node.reorg(1, include=["zz"])
    with pytest.raises(ValueError, match="neither in the mempool"):
        node.reorg(1, include=["00" * 32])
    with pytest.raises(ValueError, match="not a raw transaction"):
        node.reorg(1, include=["00" * 40])
    with pytest.raises(ValueError, match="only"):
        node.reorg(node.height() + 1)
    with pytest.raises(TypeError, match="single str"):
        node.reorg(1, include="ab" * 32)
    assert node.rpc("getbestblockhash") == tip


@regtest
def test_mining_and_paying_past_height_432(node: RegtestNode) -> None:
    node.mine(440 - node.height())  # litecoind's MWEB would activate at 432 without -vbparams
    assert node.height() == 440
    txid, vout = node.fund(node.rpc("getnewaddress"), 100_000).split(":")
    assert _unspent_sats(node, txid, int(vout)) == 100_000
    node.reorg(1)
    node.mine()
    assert _unspent_sats(node, txid, int(vout)) == 100_000


def test_devnet_imports_without_a_node_binary(tmp_path: Path) -> None:
    script = "import devnet, devnet.regtest; print(devnet.node_binary())"
    env = {"PATH": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    assert out.stdout.strip() == "None"
