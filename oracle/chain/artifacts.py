"""Read compiled artifacts and recognise deployed code; `iotsettle.oracle.chain.compiler` writes them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import CompileError

Artifact = dict[str, Any]


def artifacts_dir(config: Config) -> Path:
    return config.path(config.paths.artifacts_dir)


def load_artifact(config: Config, name: str) -> Artifact:
    """The artifact of contract ``name``; raises CompileError telling how to produce it."""
    path = artifacts_dir(config) / f"{name}.json"
    try:
        artifact: Artifact = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompileError(f"no artifact for {name} in {path.parent}; run `iotsettle compile`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CompileError(f"artifact {path} is unreadable ({exc}); run `iotsettle compile`") from None
    return artifact


def artifact_hash(artifact: Artifact) -> str:
    """sha256 of the creation bytecode: what the deployment manifest records per contract."""
    return "0x" + hashlib.sha256(bytes.fromhex(artifact["bytecode"][2:])).hexdigest()


def _masked(code: bytes, immutables: list[list[int]]) -> bytes:
    buf = bytearray(code)
    for start, length in immutables:
        buf[start : start + length] = bytes(length)
    return bytes(buf)


def runtime_matches(artifact: Artifact, onchain_code: bytes) -> bool:
    """Whether code read from the chain is this artifact's runtime code (immutables masked out)."""
    expected = bytes.fromhex(artifact["deployedBytecode"][2:])
    if len(expected) == 0 or len(onchain_code) != len(expected):
        return False
    immutables = artifact.get("immutableReferences", [])
    return _masked(onchain_code, immutables) == _masked(expected, immutables)
