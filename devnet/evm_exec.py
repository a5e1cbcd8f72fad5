"""eth_call / eth_estimateGas on py-evm with node-shaped errors.

eth-tester's own `call` decodes revert data to a plain string and drops the
raw bytes, so web3 could not rebuild custom errors or the `data` field. Here
reverts become geth's code-3 error carrying the raw data, and other VM
failures get geth's wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth.exceptions import Revert, VMError
from eth.vm.spoof import SpoofTransaction
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.exceptions import ValidationError

from devnet.errors import RpcError

ZERO_ADDRESS = b"\x00" * 20
#: JSON-RPC code geth uses for reverts, so web3 raises ContractLogicError with data.
EXECUTION_REVERTED = 3
_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_MIN_TX_GAS = 21_000


@dataclass(frozen=True, slots=True)
class CallRequest:
    """Decoded eth_call/eth_estimateGas parameters (raw bytes/ints)."""

    sender: bytes = ZERO_ADDRESS
    to: bytes = b""
    gas: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int = 0
    data: bytes = b""

    @property
    def has_fee(self) -> bool:
        fees = (self.gas_price, self.max_fee_per_gas, self.max_priority_fee_per_gas)
        return any(v is not None for v in fees)


class Executor:
    """Runs unsigned requests against one VM's state, rolling back after each run.

    Reusing a single state across runs keeps gas estimation (a dozen or so
    executions) cheap compared to rebuilding a VM per attempt.
    """

    def __init__(self, vm: Any, chain_id: int, block_gas_limit: int) -> None:
        self._vm = vm
        self._state = vm.state
        self._chain_id = chain_id
        self.block_gas_limit = block_gas_limit

    def run(self, request: CallRequest, gas: int | None = None) -> Any:
        """Execute and revert; returns the py-evm computation. Invalid txs raise RpcError."""
        spoofed = SpoofTransaction(self._unsigned(request, gas), from_=request.sender)
        snapshot = self._state.snapshot()
        try:
            return self._state.apply_transaction(spoofed)
        except ValidationError as exc:
            raise RpcError(-32000, _validation_message(str(exc))) from exc
        finally:
            self._state.revert(snapshot)

    def _unsigned(self, request: CallRequest, gas: int | None) -> Any:
        builder = self._vm.get_transaction_builder()
        nonce = int(self._state.get_nonce(request.sender))
        gas_limit = (
            gas if gas is not None else request.gas if request.gas is not None else self.block_gas_limit
        )
        if request.max_fee_per_gas is not None or request.max_priority_fee_per_gas is not None:
            max_fee = request.max_fee_per_gas
            return builder.new_unsigned_dynamic_fee_transaction(
                chain_id=self._chain_id,
                nonce=nonce,
                max_priority_fee_per_gas=request.max_priority_fee_per_gas or 0,
                max_fee_per_gas=self._state.base_fee if max_fee is None else max_fee,
                gas=gas_limit,
                to=request.to,
                value=request.value,
                data=request.data,
                access_list=(),
            )
        return builder.create_unsigned_transaction(
            nonce=nonce,
            gas_price=request.gas_price or 0,
            gas=gas_limit,
            to=request.to,
            value=request.value,
            data=request.data,
        )

    def call(self, request: CallRequest) -> bytes:
        computation = self.run(request)
        if computation.is_error:
            raise execution_error(computation.error)
        return bytes(computation.output)

    def estimate_gas(self, request: CallRequest) -> int:
        """Smallest gas limit that succeeds (binary search like geth), or the failure of the top run."""
        high = min(request.gas or self.block_gas_limit, self.block_gas_limit)
        top = self.run(request, high)
        if top.is_error:
            raise execution_error(top.error)
        # Gas burnt before refunds is a hard lower bound and usually suffices;
        # only the 63/64 call rule needs more, so try it before searching.
        used = high - int(top.get_gas_remaining())
        if self._succeeds(request, used):
            return used
        low = max(used, _MIN_TX_GAS - 1)
        while high - low > 1:
            mid = (high + low) // 2
            if self._succeeds(request, mid):
                high = mid
            else:
                low = mid
        return high

    def _succeeds(self, request: CallRequest, gas: int) -> bool:
        try:
            return not self.run(request, gas).is_error
        except RpcError:  # below the intrinsic gas of this calldata
            return False


def execution_error(error: VMError) -> RpcError:
    if isinstance(error, Revert):
        payload = error.args[0] if error.args else b""
        revert_data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        return RpcError(EXECUTION_REVERTED, _revert_message(revert_data), "0x" + revert_data.hex())
    return RpcError(-32000, _vm_error_message(error))


def _revert_message(revert_data: bytes) -> str:
    if revert_data[:4] != _ERROR_SELECTOR:
        return "execution reverted"
    try:
        (reason,) = abi_decode(["string"], revert_data[4:])
    except (DecodingError, UnicodeDecodeError):
        return "execution reverted"  # malformed Error(string): the raw data still goes out
    return f"execution reverted: {reason}"


def _vm_error_message(error: VMError) -> str:
    name = type(error).__name__
    if name == "OutOfGas":
        return "out of gas"
    if name == "InvalidInstruction":
        return f"invalid opcode: {error}"
    return f"{name}: {error}" if str(error) else name


def _validation_message(message: str) -> str:
    lowered = message.lower()
    if "balance" in lowered or "afford" in lowered:
        return f"insufficient funds for gas * price + value: {message}"
    if "base fee" in lowered:
        return f"max fee per gas less than block base fee: {message}"
    return message
