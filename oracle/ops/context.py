"""What every operation needs: the chain, the deployment manifest of that chain and, to send, an account."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, Chain, connect, load_sender
from iotsettle.oracle.chain.deploy import contract as deployed_contract
from iotsettle.oracle.chain.deploy import verify_manifest
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import ChainError, DeploymentError, KeyFileError, ProtocolError
from iotsettle.oracle.protocol.wire import SignedEvent
from web3.contract import Contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderChoice:
    """How the CLI picks the sending account.

    With neither field set, ``iotsettle.oracle.chain.connection.load_sender`` decides.
    ``key_env`` names an environment variable holding a raw hex key (for scripts that act for several
    parties); ``dev_account`` picks one of anvil's well-known development accounts, on local chains only.
    """

    key_env: str | None = None
    dev_account: int | None = None


@dataclass(frozen=True)
class OpsContext:
    config: Config
    chain: Chain
    manifest: dict[str, Any]
    sender: Signer | None = None
    _contracts: dict[str, Contract] = field(default_factory=dict, compare=False, repr=False)

    @property
    def w3(self) -> Any:
        return self.chain.w3

    @cached_property
    def rpc(self) -> RpcClient:
        """Raw JSON-RPC to the same node, for log scans and other reads that skip web3's result formatting."""
        return RpcClient(self.chain.w3)

    def address(self, name: str) -> str:
        entry = self.manifest["contracts"].get(name)
        if entry is None:
            raise DeploymentError(f"{name} is not deployed on chain {self.chain.chain_id}; run `iotsettle deploy`")
        return str(entry["address"])

    def has(self, name: str) -> bool:
        return name in self.manifest["contracts"]

    def deployed_block(self, name: str) -> int:
        return int(self.manifest["contracts"][name].get("block", 0))

    def contract(self, name: str) -> Contract:
        if name not in self._contracts:
            self._contracts[name] = deployed_contract(self.chain, self.config, self.manifest, name)
        return self._contracts[name]

    def at(self, name: str, address: str) -> Contract:
        """A contract object with ``name``'s ABI at another address (e.g. any ERC-20 with TestToken's ABI)."""
        return self.w3.eth.contract(address=address, abi=load_artifact(self.config, name)["abi"])

    def require_sender(self) -> Signer:
        if self.sender is None:
            raise KeyFileError("this operation sends a transaction but no sending account was loaded")
        return self.sender

    @cached_property
    def abis(self) -> dict[str, list[dict[str, Any]]]:
        """ABIs of every deployed contract, by name (for decoding reverts and logs)."""
        return {name: load_artifact(self.config, name)["abi"] for name in self.manifest["contracts"]}


def pick_sender(config: Config, chain: Chain, choice: SenderChoice) -> Signer:
    """The sending account per ``choice``; raises KeyFileError in one line."""
    if choice.key_env and choice.dev_account is not None:
        raise KeyFileError("give either a key variable or a development account, not both")
    if choice.key_env:
        value = os.environ.get(choice.key_env, "")
        if not value:
            raise KeyFileError(f"the environment variable {choice.key_env} is empty or not set")
        try:
            return Account.from_key(value.strip())
        except (ValueError, TypeError):
            raise KeyFileError(f"{choice.key_env} does not hold a 32-byte hex private key") from None
    if choice.dev_account is not None:
        if not chain.is_local:
            raise KeyFileError(f"development accounts exist only on local chains, not on chain {chain.chain_id}")
        if not 0 <= choice.dev_account < len(ANVIL_DEV_KEYS):
            raise KeyFileError(
                f"development account {choice.dev_account} does not exist (0..{len(ANVIL_DEV_KEYS) - 1})"
            )
        return Account.from_key(ANVIL_DEV_KEYS[choice.dev_account])
    return load_sender(config, chain)


def open_context(
    config: Config,
    rpc_url: str | None = None,
    *,
    sender: SenderChoice | None = None,
    verify: bool = True,
) -> OpsContext:
    """Connect, load and check this chain's manifest, and load the sending account when ``sender`` is given."""
    chain = connect(config, rpc_url)
    manifest = load_manifest(config, chain.chain_id)
    if verify:
        verify_manifest(chain, config, manifest)
    account = pick_sender(config, chain, sender) if sender is not None else None
    if account is not None:
        log.info("sending from %s on chain %s", account.address, chain.chain_id)
    return OpsContext(config, chain, manifest, account)


def checksum(address: str) -> str:
    if not is_address(address):
        raise ChainError(f"{address!r} is not an address")
    return to_checksum_address(address)


def parse_payloads(
    ctx: OpsContext,
    text: str,
    event_type: str,
    contract_name: str,
    command: str,
    check: Callable[[SignedEvent], None] | None = None,
) -> list[SignedEvent]:
    """Wire payloads (one JSON object per line, or one pretty-printed object) of ``event_type``, checked
    against this chain and the deployed ``contract_name``; ``command`` names the CLI command in errors. ``check``
    runs on each payload of the right type before its chain and contract are compared (it raises to refuse)."""
    stripped = text.strip()
    if not stripped:
        raise ProtocolError(f"no {event_type} payload given (expected the JSON wire format of docs/PROTOCOL.md)")
    single = stripped.startswith("{") and "\n{" not in stripped
    chunks = [stripped] if single else [line for line in stripped.splitlines() if line.strip()]
    events = [wire.decode(chunk.encode()) for chunk in chunks]
    contract_address = ctx.address(contract_name)
    for event in events:
        if event.type != event_type:
            raise ProtocolError(f"payload seq {event.seq} is a {event.type}; `{command}` relays {event_type}s")
        if check is not None:
            check(event)
        if event.chain_id != ctx.chain.chain_id:
            raise ProtocolError(
                f"payload seq {event.seq} was signed for chain {event.chain_id}, this is chain {ctx.chain.chain_id}"
            )
        if event.contract != contract_address:
            raise ProtocolError(
                f"payload seq {event.seq} was signed for contract {event.contract}, "
                f"the {contract_name} contract here is {contract_address}"
            )
    return events
