"""The ABI encoding of the view calls that read-only commands make, for the types those calls use.

Arguments are static elementary types (``uint<N>``, ``int<N>``, ``address``, ``bool``, ``bytes<N>``); results are
those, structs of them, and ``string`` / ``bytes`` (an ERC-20's symbol). Anything else raises ``ChainError``.
eth-abi encodes everything, but importing it costs a quarter of a second (it loads eth-utils and pydantic), as
much as the rest of `iotsettle agreement status` together; ``tests/chain/test_abi.py`` checks this module against
eth-abi on generated values. Addresses come back checksummed (EIP-55), as web3 returns them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from eth_hash.auto import keccak
from iotsettle.oracle.protocol.errors import ChainError

AbiParam = Mapping[str, Any]

_WORD = 32
_ELEMENTARY = re.compile(r"^(u?int)(\d*)$|^bytes(\d+)$|^address$|^bool$")


def abi_type(param: AbiParam) -> str:
    """The canonical ABI type of a parameter: a struct is ``(t1,t2,…)``, with its array suffix if any."""
    typ = str(param["type"])
    if typ.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + typ[len("tuple") :]
    return typ


def selector(name: str, inputs: Sequence[AbiParam]) -> bytes:
    """The 4-byte function selector of ``name(inputs)``."""
    return keccak(f"{name}({','.join(abi_type(p) for p in inputs)})".encode())[:4]


def checksum_address(address: str) -> str:
    """EIP-55: each hex letter upper case where the keccak of the lower-case address has a nibble ≥ 8."""
    body = address.lower().removeprefix("0x")
    digest = keccak(body.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(body))


def _unsupported(typ: str) -> ChainError:
    return ChainError(f"ABI type {typ} is not read without web3")


def _bits(digits: str) -> int:
    return int(digits) if digits else 256


def _encode_word(typ: str, value: Any) -> bytes:
    match = _ELEMENTARY.match(typ)
    if match is None:
        raise _unsupported(typ)
    if match.group(1):
        bits, signed = _bits(match.group(2)), match.group(1) == "int"
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ChainError(f"{value!r} is not a {typ}")
        return value.to_bytes(_WORD, "big", signed=signed)
    if typ == "address":
        return bytes(12) + bytes.fromhex(str(value).removeprefix("0x").rjust(40, "0"))
    if typ == "bool":
        return (1 if value else 0).to_bytes(_WORD, "big")
    size = int(match.group(3))
    data = bytes(value)
    if len(data) != size:
        raise ChainError(f"{typ} needs {size} bytes, not {len(data)}")
    return data.ljust(_WORD, b"\0")


def encode_arguments(inputs: Sequence[AbiParam], values: Sequence[Any]) -> bytes:
    """The arguments of a call whose inputs are all static elementary types."""
    if len(inputs) != len(values):
        raise ChainError(f"{len(inputs)} arguments expected, {len(values)} given")
    return b"".join(_encode_word(abi_type(p), v) for p, v in zip(inputs, values, strict=True))


def _word(data: bytes, offset: int) -> bytes:
    if offset + _WORD > len(data):
        raise ChainError("the call returned fewer bytes than its ABI says")
    return data[offset : offset + _WORD]


def _decode_word(typ: str, word: bytes) -> Any:
    match = _ELEMENTARY.match(typ)
    if match is None:
        raise _unsupported(typ)
    if match.group(1):
        return int.from_bytes(word, "big", signed=match.group(1) == "int")
    if typ == "address":
        return checksum_address(word[12:].hex())
    if typ == "bool":
        return word[-1] == 1
    return word[: int(match.group(3))]


def _static_size(param: AbiParam) -> int:
    typ = str(param["type"])
    if typ == "tuple":
        return sum(_static_size(c) for c in param["components"])
    if _ELEMENTARY.match(typ) is None:
        raise _unsupported(abi_type(param))
    return _WORD


def _decode_static(param: AbiParam, data: bytes, offset: int) -> Any:
    if str(param["type"]) == "tuple":
        values = []
        for component in param["components"]:
            values.append(_decode_static(component, data, offset))
            offset += _static_size(component)
        return tuple(values)
    return _decode_word(str(param["type"]), _word(data, offset))


def decode_results(outputs: Sequence[AbiParam], data: bytes) -> list[Any]:
    """The values of a call's results: structs as tuples, ``string`` as text, ``bytes`` as bytes."""
    values: list[Any] = []
    offset = 0
    for param in outputs:
        typ = str(param["type"])
        if typ in ("string", "bytes"):
            start = int.from_bytes(_word(data, offset), "big")
            length = int.from_bytes(_word(data, start), "big")
            if start + _WORD + length > len(data):
                raise ChainError("the call returned fewer bytes than its ABI says")
            raw = data[start + _WORD : start + _WORD + length]
            try:
                values.append(raw.decode() if typ == "string" else raw)
            except UnicodeDecodeError:
                raise ChainError("the call returned a string that is not UTF-8") from None
            offset += _WORD
        else:
            values.append(_decode_static(param, data, offset))
            offset += _static_size(param)
    return values
