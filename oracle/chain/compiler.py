"""Compile ``contracts/`` with py-solc-x into one set of artifacts, with the settings forge uses.

The compiler version and settings come from ``foundry.toml`` (one source of truth for `iotsettle compile` and
`forge build`). The solc binary is resolved in this order; the first that exists wins:

1. an explicit path: ``[compiler] solc`` in the config file or ``IOTSETTLE_COMPILER_SOLC``;
2. a py-solc-x installed compiler of exactly the pinned version (``solcx.install_solc`` on a machine with internet);
3. ``solc`` on PATH, if it reports the pinned version;
4. the solc-js adapter ``scripts/solc-js`` (Node + the pinned ``solc`` npm package in node_modules).

Same sources + same compiler + same settings ⇒ byte-identical artifacts (JSON written with sorted keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import solcx
from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import CompileError, ToolchainError
from solcx.exceptions import SolcError, SolcNotInstalled
from solcx.install import get_executable

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "iotsettle-artifact-1"
INDEX_FILE = "_build.json"  # fingerprint of the inputs the artifacts were built from


@dataclass(frozen=True)
class CompilerSettings:
    """What foundry.toml fixes for both forge and py-solc-x."""

    version: str
    optimizer: bool
    optimizer_runs: int
    evm_version: str
    via_ir: bool
    remappings: tuple[str, ...]
    src: str

    def standard_json_settings(self) -> dict[str, Any]:
        return {
            "optimizer": {"enabled": self.optimizer, "runs": self.optimizer_runs},
            "evmVersion": self.evm_version,
            "viaIR": self.via_ir,
            "remappings": list(self.remappings),
            # foundry.toml sets bytecode_hash = "none" and cbor_metadata = false: no metadata in bytecode.
            "metadata": {"bytecodeHash": "none", "appendCBOR": False},
            "outputSelection": {
                "*": {
                    "*": [
                        "abi",
                        "evm.bytecode.object",
                        "evm.deployedBytecode.object",
                        "evm.deployedBytecode.immutableReferences",
                    ]
                }
            },
        }


@dataclass(frozen=True)
class ResolvedCompiler:
    path: Path
    version: str
    how: str  # "explicit" | "py-solc-x" | "PATH" | "solc-js"


def read_foundry_settings(root: Path) -> CompilerSettings:
    path = root / "foundry.toml"
    try:
        profile = tomllib.loads(path.read_text())["profile"]["default"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise CompileError(f"cannot read compiler settings from {path}: {exc}") from None
    return CompilerSettings(
        version=str(profile["solc_version"]),
        optimizer=bool(profile.get("optimizer", False)),
        optimizer_runs=int(profile.get("optimizer_runs", 200)),
        evm_version=str(profile.get("evm_version", "shanghai")),
        via_ir=bool(profile.get("via_ir", False)),
        remappings=tuple(profile.get("remappings", ())),
        src=str(profile.get("src", "contracts")),
    )


def _version_of(binary: Path) -> str | None:
    try:
        return str(solcx.wrapper.get_solc_version(binary))
    except (SolcError, OSError, subprocess.SubprocessError, ValueError):
        return None


def resolve_compiler(config: Config, version: str) -> ResolvedCompiler:
    """Find a solc of ``version`` (see the module docstring for the order); raises ToolchainError naming the fix."""
    if config.compiler.solc:
        path = config.path(config.compiler.solc)
        found = _version_of(path)
        if found is None:
            raise ToolchainError(f"solc at {path} (from [compiler] solc) does not run; fix the path or unset it")
        if found != version:
            raise ToolchainError(f"solc at {path} is {found}, foundry.toml pins {version}")
        return ResolvedCompiler(path, found, "explicit")
    try:
        installed = get_executable(version)
        return ResolvedCompiler(Path(installed), version, "py-solc-x")
    except (SolcNotInstalled, SolcError, OSError):
        pass
    on_path = shutil.which("solc")
    if on_path and _version_of(Path(on_path)) == version:
        return ResolvedCompiler(Path(on_path), version, "PATH")
    adapter = config.root / "scripts" / "solc-js"
    if adapter.is_file() and shutil.which("node") and (config.root / "node_modules" / "solc").is_dir():
        found = _version_of(adapter)
        if found == version:
            return ResolvedCompiler(adapter, found, "solc-js")
        if found is not None:
            raise ToolchainError(f"node_modules/solc is {found}, foundry.toml pins {version}; run scripts/setup")
    raise ToolchainError(
        f"no solc {version} found; run scripts/setup (installs solc-js), or `python -m solcx.install v{version}`"
        " on a machine with internet, or set IOTSETTLE_COMPILER_SOLC"
    )


def source_files(root: Path, settings: CompilerSettings) -> list[Path]:
    return sorted((root / settings.src).rglob("*.sol"))


def compile_contracts(config: Config) -> dict[str, dict[str, Any]]:
    """Compile every contract under the source folder; returns contract name → artifact dict."""
    root = config.root
    settings = read_foundry_settings(root)
    files = source_files(root, settings)
    if not files:
        raise CompileError(f"no Solidity sources under {root / settings.src}")
    compiler = resolve_compiler(config, settings.version)
    log.info("compiling %d files with solc %s (%s: %s)", len(files), compiler.version, compiler.how, compiler.path)
    sources = {f.relative_to(root).as_posix(): {"content": f.read_text()} for f in files}
    standard_input = {"language": "Solidity", "sources": sources, "settings": settings.standard_json_settings()}
    try:
        output = solcx.compile_standard(
            standard_input, base_path=str(root), allow_paths=[str(root)], solc_binary=compiler.path
        )
    except SolcError as exc:
        raise CompileError(_first_error(exc)) from None
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError(errors[0].get("formattedMessage", errors[0].get("message", "compilation failed")).strip())

    artifacts: dict[str, dict[str, Any]] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        if source_name not in sources:
            continue  # libraries pulled in by imports (OpenZeppelin) are not artifacts of ours
        source_hash = hashlib.sha256(sources[source_name]["content"].encode()).hexdigest()
        for name, data in sorted(contracts.items()):
            if name in artifacts:
                raise CompileError(f"two contracts are named {name}: {artifacts[name]['sourceName']} and {source_name}")
            bytecode = "0x" + data["evm"]["bytecode"]["object"]
            deployed = "0x" + data["evm"]["deployedBytecode"]["object"]
            artifacts[name] = {
                "format": ARTIFACT_FORMAT,
                "contractName": name,
                "sourceName": source_name,
                "sourceHash": source_hash,
                "abi": data["abi"],
                "bytecode": bytecode,
                "deployedBytecode": deployed,
                # byte ranges of immutables in the runtime code, filled in at deployment (masked when comparing)
                "immutableReferences": sorted(
                    [ref["start"], ref["length"]]
                    for refs in data["evm"]["deployedBytecode"].get("immutableReferences", {}).values()
                    for ref in refs
                ),
                "compiler": {"version": compiler.version, "settings": settings.standard_json_settings()},
            }
    return artifacts


def _first_error(exc: SolcError) -> str:
    """The first compiler error as solc formats it (file:line and message), from JSON or plain output."""
    text = (getattr(exc, "stdout_data", "") or getattr(exc, "stderr_data", "") or str(exc)).strip()
    try:
        errors = [e for e in json.loads(text).get("errors", []) if e.get("severity") == "error"]
    except (json.JSONDecodeError, AttributeError):
        errors = []
    if errors:
        message: str = errors[0].get("formattedMessage", errors[0].get("message", ""))
        return message.strip()
    return text.splitlines()[0] if text else "solc failed"


def write_artifacts(config: Config, artifacts: dict[str, dict[str, Any]]) -> Path:
    """Write one JSON per contract to the artifacts folder, replacing what was there; returns the folder."""
    out = config.path(config.paths.artifacts_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        if stale.stem not in artifacts and stale.name != INDEX_FILE:
            stale.unlink()
    for name, artifact in artifacts.items():
        text = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
        target = out / f"{name}.json"
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
    return out


def build_fingerprint(config: Config) -> str:
    """sha256 over every source file, the import libraries' lock file and the compiler settings."""
    settings = read_foundry_settings(config.root)
    digest = hashlib.sha256(json.dumps(settings.standard_json_settings(), sort_keys=True).encode())
    digest.update(settings.version.encode())
    for path in source_files(config.root, settings):
        digest.update(path.relative_to(config.root).as_posix().encode() + b"\0" + path.read_bytes())
    lock = config.root / "package-lock.json"
    if lock.is_file():
        digest.update(lock.read_bytes())
    return digest.hexdigest()


def ensure_compiled(config: Config, force: bool = False) -> tuple[Path, bool]:
    """Compile unless the artifacts already match the sources; returns (artifacts folder, compiled now?)."""
    out = config.path(config.paths.artifacts_dir)
    fingerprint = build_fingerprint(config)
    index = out / INDEX_FILE
    if not force and index.is_file():
        try:
            if json.loads(index.read_text()).get("fingerprint") == fingerprint:
                return out, False
        except (OSError, json.JSONDecodeError):
            pass
    artifacts = compile_contracts(config)
    write_artifacts(config, artifacts)
    index.write_text(json.dumps({"fingerprint": fingerprint, "contracts": sorted(artifacts)}, indent=2) + "\n")
    return out, True
