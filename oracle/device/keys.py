"""Device keys: Web3 Secret Storage keystore files (eth-keyfile) and the per-key sequence counter.

A keystore is written with mode 0600 and never overwritten. The password comes from ``IOTSETTLE_DEVICE_PASSWORD``
or from a password file (``--password-file`` / ``IOTSETTLE_DEVICE_PASSWORD_FILE``), never from a command-line flag.

The sequence counter lives beside the key (``<keystore>.seq``) because the protocol's sequence rule is per key:
strictly increasing across everything the device signs, starting at 1. It reserves numbers in blocks so a
device does not write the file for every event; a crash skips at most one block, which the rule allows (gaps are
fine, reuse is not).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import eth_keyfile
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_from_name, kind_name
from iotsettle.oracle.protocol.eip712 import address_of
from iotsettle.oracle.protocol.errors import ConfigError, KeyFileError

log = logging.getLogger(__name__)

PASSWORD_ENV = "IOTSETTLE_DEVICE_PASSWORD"
PASSWORD_FILE_ENV = "IOTSETTLE_DEVICE_PASSWORD_FILE"
#: Extra member written into our keystore files; other Secret Storage readers ignore unknown members.
METADATA_KEY = "iotsettle"
_MAX_SEQ = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A loaded device key. ``repr`` never shows the private key."""

    address: str
    private_key: bytes
    kind: DeviceKind | None = None
    path: Path | None = None

    def __repr__(self) -> str:
        return f"DeviceKey(address={self.address!r}, kind={self.kind!r}, path={self.path!r})"

    @classmethod
    def from_private_key(cls, private_key: bytes | str, kind: DeviceKind | None = None) -> DeviceKey:
        raw = parse_private_key(private_key)
        return cls(address_of(raw), raw, kind)

    @property
    def client_id(self) -> str:
        """The MQTT client id convention for a device: ``dev-`` + the first 8 hex digits of its address."""
        return client_id_for(self.address)


def client_id_for(address: str) -> str:
    return "dev-" + address.removeprefix("0x").removeprefix("0X")[:8].lower()


def parse_private_key(value: bytes | str) -> bytes:
    if isinstance(value, str):
        text = value.strip().removeprefix("0x").removeprefix("0X")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise KeyFileError("a private key must be 32 bytes of hex") from None
    else:
        raw = bytes(value)
    if (
        len(raw) != 32
        or not 0 < int.from_bytes(raw, "big") < 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    ):
        raise KeyFileError("a private key must be 32 bytes and a valid secp256k1 scalar")
    return raw


def _check_private_file(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{what} {path} is readable by other users (mode {stat.S_IMODE(mode):o}); chmod 600 it")


def resolve_password(password_file: str | os.PathLike[str] | None = None) -> str:
    """The keystore password: an explicit password file, else ``IOTSETTLE_DEVICE_PASSWORD``, else the file named by
    ``IOTSETTLE_DEVICE_PASSWORD_FILE``. A trailing newline in a password file is not part of the password."""
    if password_file is None and os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if password_file is None:
        password_file = os.environ.get(PASSWORD_FILE_ENV) or None
    if password_file is None:
        raise KeyFileError(f"no keystore password: set {PASSWORD_ENV} or give a password file")
    path = Path(password_file)
    try:
        _check_private_file(path, "password file")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read password file {path}: {exc.strerror}") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise KeyFileError(f"password file {path} is empty")
    return password


def create_keystore(
    out_dir: str | os.PathLike[str],
    password: str,
    *,
    kind: DeviceKind | None = None,
    private_key: bytes | None = None,
    kdf: Literal["pbkdf2", "scrypt"] = "scrypt",
    iterations: int | None = None,
) -> DeviceKey:
    """Write a new keystore ``<out_dir>/<address>.json`` (mode 0600) and return the key.

    ``iterations`` lowers the KDF work factor (tests and throw-away demo fleets); the eth-keyfile default is used
    otherwise. Raises KeyFileError if the file exists: a device identity is never silently replaced.
    """
    raw = parse_private_key(private_key) if private_key is not None else _new_private_key()
    address = address_of(raw)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{address}.json"
    document: dict[str, Any] = eth_keyfile.create_keyfile_json(
        raw,
        password.encode(),
        kdf=kdf,
        iterations=iterations,
    )
    document["address"] = address.removeprefix("0x").lower()
    document[METADATA_KEY] = {"kind": kind_name(kind) if kind else None}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a device key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    log.info("created keystore %s for device %s", path, address)
    return DeviceKey(address, raw, kind, path)


def _new_private_key() -> bytes:
    while True:
        candidate = secrets.token_bytes(32)
        try:
            return parse_private_key(candidate)
        except KeyFileError:
            continue


def load_keystore(path: str | os.PathLike[str], password: str) -> DeviceKey:
    """Decrypt a keystore. Refuses files readable by group or others, and wrong passwords, with KeyFileError."""
    keystore = Path(path)
    try:
        _check_private_file(keystore, "keystore")
        document = json.loads(keystore.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"cannot read keystore {keystore}: {exc.strerror}") from None
    except json.JSONDecodeError:
        raise KeyFileError(f"{keystore} is not a keystore (not JSON)") from None
    if not isinstance(document, dict) or ("crypto" not in document and "Crypto" not in document):
        raise KeyFileError(f"{keystore} is not a Web3 Secret Storage keystore")
    try:
        raw = eth_keyfile.decode_keyfile_json(document, password.encode())
    except ValueError:
        raise KeyFileError(f"wrong password for keystore {keystore}") from None
    except (KeyError, TypeError, NotImplementedError) as exc:
        raise KeyFileError(f"{keystore} is not a readable keystore: {exc}") from None
    stored = (document.get(METADATA_KEY) or {}).get("kind")
    try:
        kind = kind_from_name(stored) if isinstance(stored, str) else None
    except ConfigError:
        kind = None  # a kind this version does not know: `device register` asks for --kind
    return DeviceKey(address_of(raw), raw, kind, keystore)


def sequence_path(keystore: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(keystore)}.seq")


class SequenceCounter:
    """Hands out a device's sequence numbers: strictly increasing, persisted, exclusive to one process.

    The file holds ``{"device": ..., "reserved": N}``: every number up to N may have been used. On open the next
    number is N + 1 and a new block is reserved before any number of it is handed out.
    """

    def __init__(self, path: str | os.PathLike[str], device: str, *, block: int = 1000) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = Path(path)
        self.device = device
        self._block = block
        self._mutex = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise KeyFileError(f"sequence counter {self.path} is in use by another process") from None
        reserved = self._read_reserved()
        self._next = reserved + 1
        self._reserved = reserved

    def _read_reserved(self) -> int:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"sequence counter {self.path} is unreadable: {exc}") from None
        if not isinstance(document, dict) or str(document.get("device", "")).lower() != self.device.lower():
            raise KeyFileError(f"sequence counter {self.path} belongs to another device")
        reserved = document.get("reserved")
        if isinstance(reserved, bool) or not isinstance(reserved, int) or not 0 <= reserved <= _MAX_SEQ:
            raise KeyFileError(f"sequence counter {self.path} holds an invalid value")
        return reserved

    def _write_reserved(self, reserved: int) -> None:
        _write_durably(self.path, {"device": self.device, "reserved": reserved})
        self._reserved = reserved

    @property
    def peek(self) -> int:
        """The number ``next()`` would return."""
        return self._next

    def next(self) -> int:
        with self._mutex:
            seq = self._next
            if seq > _MAX_SEQ:
                raise KeyFileError(f"device {self.device} has used every uint64 sequence number")
            if seq > self._reserved:
                self._write_reserved(min(seq + self._block - 1, _MAX_SEQ))
            self._next = seq + 1
            return seq

    def close(self) -> None:
        """Release the process lock. Unused reserved numbers are skipped by the next owner."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> SequenceCounter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def deliveries_path(keystore: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(keystore)}.deliveries")


class DeliveryAlreadySigned(KeyFileError):
    """The device already signed a delivery for this escrow; it signs one per escrow, ever."""


def _escrow_key(chain_id: int, contract: str, escrow_id: int) -> str:
    return f"{chain_id}:{contract.lower()}:{escrow_id}"


class MemoryDeliveryLog:
    """The escrows a device signed a delivery for, in memory: for tests and dry runs.

    Why one delivery per escrow: the first valid delivery relayed releases an escrow and any other is refused as
    Replayed, so a device that signed two (say, one within the cold-chain limit and one above it) would let whoever
    relays choose the outcome.
    """

    def __init__(self) -> None:
        self._escrows: set[str] = set()
        self._mutex = threading.Lock()

    def signed(self, chain_id: int, contract: str, escrow_id: int) -> bool:
        return _escrow_key(chain_id, contract, escrow_id) in self._escrows

    def claim(self, chain_id: int, contract: str, escrow_id: int) -> None:
        """Record the delivery about to be signed; DeliveryAlreadySigned if one was signed before."""
        key = _escrow_key(chain_id, contract, escrow_id)
        with self._mutex:
            if key in self._escrows:
                raise DeliveryAlreadySigned(
                    f"a delivery for escrow {escrow_id} was already signed; a device signs "
                    "one delivery per escrow (the first relayed releases it)"
                )
            self._record(key)

    def _record(self, key: str) -> None:
        self._escrows.add(key)

    def close(self) -> None:
        return None


class DeliveryLog(MemoryDeliveryLog):
    """The escrows a device signed a delivery for, persisted next to its keystore (``<keystore>.deliveries``).

    The record is written and fsynced before the signature exists, so a crash or a restart can never lead to a second
    delivery for the same escrow. The file holds ``{"device": ..., "escrows": ["chainId:contract:escrowId", ...]}``.
    """

    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.device = device
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"delivery log {self.path} is unreadable: {exc}") from None
        if not isinstance(document, dict) or str(document.get("device", "")).lower() != device.lower():
            raise KeyFileError(f"delivery log {self.path} belongs to another device")
        escrows = document.get("escrows")
        if not isinstance(escrows, list) or not all(isinstance(e, str) for e in escrows):
            raise KeyFileError(f"delivery log {self.path} holds an invalid value")
        self._escrows = set(escrows)

    def _record(self, key: str) -> None:
        escrows = self._escrows | {key}
        _write_durably(self.path, {"device": self.device, "escrows": sorted(escrows)})
        self._escrows = escrows


class MemoryCounter:
    """A sequence counter that is not persisted: for tests and dry runs that start from a known number."""

    def __init__(self, start: int = 1) -> None:
        self._next = start
        self._mutex = threading.Lock()

    @property
    def peek(self) -> int:
        return self._next

    def next(self) -> int:
        with self._mutex:
            seq = self._next
            self._next += 1
            return seq

    def close(self) -> None:
        return None


def _write_durably(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` (JSON, mode 0600) so that a crash leaves the old or the new file, never a
    torn one, and the new one survives a power cut once this returns (file and folder synced)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
