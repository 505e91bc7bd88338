"""The deployment this oracle serves, resolved once at start-up and handed to the intake and the settlement half.

``resolve`` connects to the node, loads the deployment manifest of its chain and checks it against the chain
(genesis, every contract's code), loads the relayer key, and reads the ABIs of the contracts it relays to. A kind
whose contract is not in the manifest is not relayed (``iotsettle.oracle.protocol.kinds``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.connection import Chain, connect, load_lanes, load_relayer
from iotsettle.oracle.chain.deploy import verify_manifest
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.chain.revert import ErrorDecoder
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import DeploymentError
from iotsettle.oracle.protocol.kinds import CONTRACT_OF_KIND
from web3.contract import Contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """What the start-up checks established about the chain and the contracts this oracle relays to."""

    chain: Chain
    manifest: dict[str, Any]
    relayer: Signer
    contracts: dict[str, str]  # wire type → verifying contract address, for the kinds whose contract is deployed
    abis: dict[str, list[dict[str, Any]]]  # manifest name → ABI: the relayed kinds' contracts and the DeviceRegistry
    errors: ErrorDecoder  # the custom errors of those contracts
    lanes: tuple[Signer, ...] = ()  # [oracle] relayer_keys: more relayer accounts, each its own nonce lane

    @property
    def relayers(self) -> tuple[Signer, ...]:
        """Every relayer account, ``relayer`` first: one nonce lane each."""
        return (self.relayer, *self.lanes)

    def abi_of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The ABI of the contract that verifies ``kind`` (a wire type this deployment relays)."""
        return self.abis[CONTRACT_OF_KIND[kind]]

    def contract(self, name: str) -> Contract:
        """A web3 contract object for ``name`` (one of ``abis``), at its manifest address."""
        return self.chain.w3.eth.contract(address=self.manifest["contracts"][name]["address"], abi=self.abis[name])


def resolve(config: Config, chain: Chain | None = None) -> Deployment:
    """Connect (unless ``chain`` is given), verify the manifest against the chain and load the relayer keys; raises
    ChainError / DeploymentError / KeyFileError / CompileError naming the problem."""
    chain = chain or connect(config)  # also enforces [chain] chain_id
    manifest = load_manifest(config, chain.chain_id)
    verify_manifest(chain, config, manifest)  # chain id, genesis and every contract's code hash
    deployed = manifest["contracts"]
    if "DeviceRegistry" not in deployed:
        raise DeploymentError(f"the DeviceRegistry is not deployed on chain {chain.chain_id}; run `iotsettle deploy`")
    contracts = {kind: deployed[name]["address"] for kind, name in CONTRACT_OF_KIND.items() if name in deployed}
    if not contracts:
        raise DeploymentError(f"none of {', '.join(CONTRACT_OF_KIND.values())} is deployed on chain {chain.chain_id}")
    missing = [name for name in CONTRACT_OF_KIND.values() if name not in deployed]
    if missing:
        log.info("not relaying the events of %s: not in the deployment manifest", ", ".join(missing))
    relayer = load_relayer(config, chain)  # keystore mode bits and password checked here
    lanes = load_lanes(config, relayer)
    names = [name for name in (*CONTRACT_OF_KIND.values(), "DeviceRegistry") if name in deployed]
    abis = {name: load_artifact(config, name)["abi"] for name in dict.fromkeys(names)}
    return Deployment(chain, manifest, relayer, contracts, abis, ErrorDecoder(abis.values()), lanes)
