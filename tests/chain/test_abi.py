"""The view-call ABI of the read-only commands (`chain.abi`): eth-abi's codec, results shaped as web3's contract
calls return them, and errors as one sentence."""

from __future__ import annotations

import eth_abi
import pytest
from iotsettle.oracle.chain.abi import abi_type, decode_results, encode_arguments, selector
from iotsettle.oracle.protocol.errors import ChainError

ADDRESS = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
STRUCT = {
    "type": "tuple",
    "name": "view",
    "components": [{"type": "address", "name": "owner"}, {"type": "uint64", "name": "seq"}],
}


def test_a_struct_comes_back_as_a_tuple_with_checksummed_addresses() -> None:
    outputs = [STRUCT, {"type": "string", "name": ""}, {"type": "address", "name": ""}]
    data = eth_abi.encode(["(address,uint64)", "string", "address"], [(ADDRESS, 7), "TEST", ADDRESS])
    assert decode_results(outputs, data) == [(CHECKSUMMED, 7), "TEST", CHECKSUMMED]


def test_arguments_and_selector_are_the_reference_ones() -> None:
    inputs = [{"type": "address"}, {"type": "uint256"}]
    assert selector("transfer", inputs).hex() == "a9059cbb"
    assert encode_arguments(inputs, [ADDRESS, 5]) == eth_abi.encode(["address", "uint256"], [ADDRESS, 5])
    assert abi_type({"type": "tuple[]", "components": STRUCT["components"]}) == "(address,uint64)[]"


def test_a_bad_value_or_a_short_result_is_one_sentence() -> None:
    with pytest.raises(ChainError, match="does not match its ABI"):
        decode_results([{"type": "uint256", "name": ""}], bytes(16))
    with pytest.raises(ChainError, match="cannot encode the call's arguments"):
        encode_arguments([{"type": "uint8", "name": ""}], [256])
