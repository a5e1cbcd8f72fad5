# pragma version ~=0.4.3
# @license MIT
"""
@title Devnet example token
@notice ERC-20 whose supply is controlled by a single minter and bounded by a
        cap. The cap and the minter check revert with fixed reason strings so
        examples and tests can provoke deterministic, decodable reverts
        ("only minter", "cap exceeded") on any devnet.
"""

from ethereum.ercs import IERC20

implements: IERC20


event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256


event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256


event MinterChanged:
    previous_minter: indexed(address)
    new_minter: indexed(address)


name: public(String[32])
symbol: public(String[16])
decimals: public(uint8)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
minter: public(address)
# Upper bound for totalSupply; mint() past it reverts with "cap exceeded".
max_mint: public(uint256)


@deploy
def __init__(_name: String[32], _symbol: String[16], _decimals: uint8, _max_mint: uint256):
    self.name = _name
    self.symbol = _symbol
    self.decimals = _decimals
    self.max_mint = _max_mint
    self.minter = msg.sender
    log MinterChanged(previous_minter=empty(address), new_minter=msg.sender)


@internal
def _transfer(_from: address, _to: address, _value: uint256):
    assert _to != empty(address), "transfer to zero address"
    assert self.balanceOf[_from] >= _value, "insufficient balance"
    self.balanceOf[_from] -= _value
    self.balanceOf[_to] += _value
    log Transfer(sender=_from, receiver=_to, value=_value)


@external
def transfer(_to: address, _value: uint256) -> bool:
    self._transfer(msg.sender, _to, _value)
    return True


@external
def transferFrom(_from: address, _to: address, _value: uint256) -> bool:
    allowed: uint256 = self.allowance[_from][msg.sender]
    assert allowed >= _value, "insufficient allowance"
    if allowed != max_value(uint256):
        self.allowance[_from][msg.sender] = allowed - _value
    self._transfer(_from, _to, _value)
    return True


@external
def approve(_spender: address, _value: uint256) -> bool:
    self.allowance[msg.sender][_spender] = _value
    log Approval(owner=msg.sender, spender=_spender, value=_value)
    return True


@external
def mint(_to: address, _amount: uint256) -> bool:
    assert msg.sender == self.minter, "only minter"
    assert _to != empty(address), "mint to zero address"
    # Compare against the headroom, not the sum, so huge amounts hit the
    # readable cap check instead of an anonymous overflow revert.
    assert _amount <= self.max_mint - self.totalSupply, "cap exceeded"
    self.totalSupply += _amount
    self.balanceOf[_to] += _amount
    log Transfer(sender=empty(address), receiver=_to, value=_amount)
    return True


@external
def burn(_from: address, _amount: uint256) -> bool:
    assert msg.sender == self.minter, "only minter"
    assert self.balanceOf[_from] >= _amount, "burn exceeds balance"
    self.balanceOf[_from] -= _amount
    self.totalSupply -= _amount
    log Transfer(sender=_from, receiver=empty(address), value=_amount)
    return True


@external
def set_minter(_new_minter: address):
    assert msg.sender == self.minter, "only minter"
    log MinterChanged(previous_minter=self.minter, new_minter=_new_minter)
    self.minter = _new_minter
