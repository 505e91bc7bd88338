"""The deployment manifest of a chain, ``deployments/<chainId>.json``: its path, and reading it (``deploy`` writes it).

Apart from ``deploy`` because reading it needs no web3: the CLI's read-only commands load it without web3
(``iotsettle.oracle.ops.views``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import DeploymentError

MANIFEST_FORMAT = "iotsettle-deployment-1"


def manifest_path(config: Config, chain_id: int) -> Path:
    return config.path(config.paths.deployments_dir) / f"{chain_id}.json"


def load_manifest(config: Config, chain_id: int) -> dict[str, Any]:
    """The manifest of ``chain_id``; raises DeploymentError telling how to create it."""
    path = manifest_path(config, chain_id)
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeploymentError(
            f"nothing is deployed on chain {chain_id} yet ({path} is missing); run `iotsettle deploy`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"deployment manifest {path} is unreadable: {exc}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DeploymentError(f"{path} is not an iotsettle deployment manifest")
    return manifest
