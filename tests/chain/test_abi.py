"""The web3-free ABI codec of the read-only commands (`chain.abi`) against eth-abi, the reference, on generated
values: the same bytes for arguments, the same values for results (addresses checksummed as eth-utils does)."""

from __future__ import annotations

import eth_abi
import pytest
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st
from iotsettle.oracle.chain.abi import checksum_address, decode_results, encode_arguments, selector
from iotsettle.oracle.protocol.errors import ChainError

ELEMENTARY = ["uint8", "uint32", "uint64", "uint256", "int16", "int256", "address", "bool", "bytes4", "bytes32"]


def _values(typ: str) -> st.SearchStrategy:
    if typ.startswith("uint"):
        return st.integers(0, (1 << int(typ[4:])) - 1)
    if typ.startswith("int"):
        bits = int(typ[3:])
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if typ == "address":
        return st.binary(min_size=20, max_size=20).map(to_checksum_address)
    if typ == "bool":
        return st.booleans()
    return st.binary(min_size=int(typ[5:]), max_size=int(typ[5:]))


params = st.lists(st.sampled_from(ELEMENTARY), min_size=1, max_size=6)


@given(params.flatmap(lambda types: st.tuples(st.just(types), st.tuples(*(_values(t) for t in types)))))
def test_arguments_encode_as_eth_abi_encodes_them(case) -> None:
    types, values = case
    inputs = [{"type": t, "name": ""} for t in types]
    assert encode_arguments(inputs, list(values)) == eth_abi.encode(types, list(values))


@given(
    params.flatmap(lambda types: st.tuples(st.just(types), st.tuples(*(_values(t) for t in types)))),
    st.text(max_size=40),
)
def test_a_struct_and_a_string_decode_as_eth_abi_decodes_them(case, text) -> None:
    types, values = case
    struct = {"type": "tuple", "name": "", "components": [{"type": t, "name": f"f{i}"} for i, t in enumerate(types)]}
    outputs = [struct, {"type": "string", "name": ""}, {"type": "uint256", "name": ""}]
    data = eth_abi.encode([f"({','.join(types)})", "string", "uint256"], [values, text, 7])
    decoded = decode_results(outputs, data)
    expected = tuple(to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True))
    assert decoded == [expected, text, 7]


def test_the_selector_and_checksum_are_the_reference_ones() -> None:
    assert selector("transfer", [{"type": "address"}, {"type": "uint256"}]).hex() == "a9059cbb"
    address = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    assert checksum_address(address) == to_checksum_address(address) == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def test_what_it_does_not_read_is_one_sentence() -> None:
    with pytest.raises(ChainError, match=r"^ABI type uint256\[\] is not read without web3$"):
        decode_results([{"type": "uint256[]", "name": ""}], bytes(64))
    with pytest.raises(ChainError, match="fewer bytes than its ABI says"):
        decode_results([{"type": "uint256", "name": ""}], bytes(16))
    with pytest.raises(ChainError, match="is not a uint8"):
        encode_arguments([{"type": "uint8", "name": ""}], [256])
