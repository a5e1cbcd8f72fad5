"""Deterministic dev accounts shared by every devnet flavour.

Both devnets derive their funded accounts from the same BIP-39 mnemonic and
path as anvil, so a test written against one devnet sees the very same
addresses and keys on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_account import Account

#: anvil's (and hardhat's) well-known public dev mnemonic; never fund it on a real chain.
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
#: BIP-44 path prefix anvil appends the account index to.
DEFAULT_DERIVATION_PATH = "m/44'/60'/0'/0/"
#: Number of funded accounts anvil creates by default.
DEFAULT_ACCOUNT_COUNT = 10
#: Balance of each dev account in ether (anvil's default).
DEFAULT_BALANCE_ETH = 10_000

Account.enable_unaudited_hdwallet_features()


@dataclass(frozen=True, slots=True)
class DevAccount:
    """A funded devnet account; the key is hex with 0x prefix so it can be fed to any signer."""

    address: str
    private_key: str

    def __repr__(self) -> str:
        # Keep keys out of assertion output and logs even though they are public dev keys.
        return f"DevAccount(address={self.address!r})"


def derive_accounts(
    mnemonic: str = DEFAULT_MNEMONIC,
    count: int = DEFAULT_ACCOUNT_COUNT,
    derivation_path: str = DEFAULT_DERIVATION_PATH,
) -> list[DevAccount]:
    """Derive `count` accounts exactly the way anvil does (path prefix + index)."""
    return list(_derive_cached(mnemonic, count, derivation_path))


@lru_cache(maxsize=16)
def _derive_cached(mnemonic: str, count: int, derivation_path: str) -> tuple[DevAccount, ...]:
    # HD derivation costs a few ms per key (PBKDF2); devnets are started often in tests.
    prefix = derivation_path if derivation_path.endswith("/") else derivation_path + "/"
    out: list[DevAccount] = []
    for index in range(count):
        acct = Account.from_mnemonic(mnemonic, account_path=f"{prefix}{index}")
        out.append(DevAccount(address=acct.address, private_key="0x" + acct.key.hex()))
    return tuple(out)
