"""Deploy the contracts in dependency order and keep one manifest per chain: ``deployments/<chainId>.json``.

Re-running is idempotent: a contract whose manifest entry still has this artifact's runtime code on chain
(immutables masked) is kept; one whose code is missing (a fresh node) or whose artifact changed is deployed
again, and so is everything that depends on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eth_typing import ChecksumAddress
from iotsettle.oracle.chain.artifacts import Artifact, artifact_hash, artifacts_dir, load_artifact, runtime_matches
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.manifest import MANIFEST_FORMAT, manifest_path
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import DeploymentError
from web3.contract import Contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One contract to deploy: constructor arguments name earlier contracts, then take ``[deploy]`` settings;
    local_only skips public chains."""

    name: str
    depends_on: tuple[str, ...] = ()
    local_only: bool = False
    settings: tuple[str, ...] = ()  # attributes of ``config.deploy``, after the addresses


#: Dependency order. Constructor arguments are the addresses of ``depends_on``, in that order, then ``settings``.
PLAN: tuple[Step, ...] = (
    Step("DeviceRegistry"),
    Step("DeliveryEscrow", ("DeviceRegistry",)),
    Step("MeteredBilling", ("DeviceRegistry",)),
    Step(
        "OptimisticBilling",
        ("DeviceRegistry", "MeteredBilling"),
        settings=("optimistic_window", "optimistic_bond_wei"),
    ),
    Step("MotorInsurance", ("DeviceRegistry",)),
    Step("OptimisticMotor", ("DeviceRegistry",), settings=("optimistic_window", "optimistic_bond_wei")),
    Step("CropInsurance", ("DeviceRegistry",)),
    Step("HealthInsurance", ("DeviceRegistry",)),
    Step("LoanBook"),
    Step("WithdrawalGuard", ("DeviceRegistry",)),
    Step("TestToken", local_only=True),
)


def contract(chain: Chain, config: Config, manifest: dict[str, Any], name: str) -> Contract:
    """A web3 contract object for a deployed contract, by name."""
    entry = manifest["contracts"].get(name)
    if entry is None:
        raise DeploymentError(f"{name} is not in the deployment manifest of chain {manifest['chainId']}")
    address: ChecksumAddress = entry["address"]
    return chain.w3.eth.contract(address=address, abi=load_artifact(config, name)["abi"])


def verify_manifest(chain: Chain, config: Config, manifest: dict[str, Any]) -> None:
    """Refuse a manifest that does not describe this chain: other chain id, other genesis, or code missing/changed."""
    if manifest["chainId"] != chain.chain_id:
        raise DeploymentError(f"the manifest is for chain {manifest['chainId']}, the node is chain {chain.chain_id}")
    if manifest.get("genesisHash") and manifest["genesisHash"] != chain.genesis_hash():
        raise DeploymentError(
            f"chain {chain.chain_id} at {chain.rpc_url} is not the chain the manifest was written for "
            "(different genesis block: a fresh node?); run `iotsettle deploy` again"
        )
    for name, entry in manifest["contracts"].items():
        code = bytes(chain.w3.eth.get_code(entry["address"]))
        if not runtime_matches(load_artifact(config, name), code):
            raise DeploymentError(
                f"{name} at {entry['address']} does not hold the compiled code; run `iotsettle deploy`"
            )


def _still_deployed(chain: Chain, artifact: Artifact, entry: dict[str, Any] | None) -> bool:
    if not entry or entry.get("artifactHash") != artifact_hash(artifact):
        return False
    return runtime_matches(artifact, bytes(chain.w3.eth.get_code(entry["address"])))


def deploy_all(
    config: Config,
    chain: Chain,
    account: Signer,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Deploy what is missing or changed, write the manifest and return it."""
    available = {p.stem for p in artifacts_dir(config).glob("*.json")}
    path = manifest_path(config, chain.chain_id)
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        previous = {}
    genesis = chain.genesis_hash()
    old_entries: dict[str, Any] = previous.get("contracts", {}) if previous.get("genesisHash") == genesis else {}

    entries: dict[str, Any] = {}
    redeployed: set[str] = set()
    for step in PLAN:
        if step.local_only and not chain.is_local:
            continue
        if step.name not in available:
            log.warning("%s has no artifact; skipped", step.name)
            continue
        missing = [d for d in step.depends_on if d not in entries]
        if missing:
            raise DeploymentError(
                f"{step.name} needs {', '.join(missing)}, which has no artifact; run `iotsettle compile`"
            )
        artifact = load_artifact(config, step.name)
        entry = old_entries.get(step.name)
        args: list[Any] = [entries[d]["address"] for d in step.depends_on]
        args += [getattr(config.deploy, setting) for setting in step.settings]
        if (
            entry is not None
            and not redeployed.intersection(step.depends_on)
            and entry.get("args") == args
            and _still_deployed(chain, artifact, entry)
        ):
            entries[step.name] = entry
            progress(f"{step.name}: already deployed at {entry['address']}")
            continue
        factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = send(chain, account, factory.constructor(*args).build_transaction({"from": account.address}))
        entries[step.name] = {
            "address": receipt["contractAddress"],
            "block": receipt["blockNumber"],
            "txHash": receipt["transactionHash"].to_0x_hex(),
            "artifactHash": artifact_hash(artifact),
            "args": args,
        }
        redeployed.add(step.name)
        progress(
            f"{step.name}: deployed at {receipt['contractAddress']} "
            f"(block {receipt['blockNumber']}, gas {receipt['gasUsed']})"
        )

    if not entries:
        raise DeploymentError("there is nothing to deploy: no contract artifacts; run `iotsettle compile`")
    manifest = {
        "format": MANIFEST_FORMAT,
        "chainId": chain.chain_id,
        "genesisHash": genesis,
        "rpcUrl": chain.rpc_url,
        "deployer": account.address,
        "updatedAt": datetime.now(UTC).isoformat(timespec="seconds")
        if redeployed or not previous
        else previous.get("updatedAt"),
        "contracts": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return manifest
