"""Device keystores and the persisted sequence counter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from iotsettle.oracle.device.keys import (
    DeviceKey,
    SequenceCounter,
    client_id_for,
    create_keystore,
    load_keystore,
    resolve_password,
    sequence_path,
)
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.eip712 import address_of
from iotsettle.oracle.protocol.errors import KeyFileError

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


def test_keystore_round_trip_is_private_and_never_overwritten(tmp_path: Path) -> None:
    key = create_keystore(tmp_path, "s3cret", kind=DeviceKind.METER, private_key=KEY, kdf="pbkdf2", iterations=1024)
    assert key.path is not None
    assert key.path.name == f"{address_of(KEY)}.json"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    loaded = load_keystore(key.path, "s3cret")
    assert (loaded.address, loaded.private_key, loaded.kind) == (address_of(KEY), KEY, DeviceKind.METER)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_keystore(tmp_path, "other", private_key=KEY, kdf="pbkdf2", iterations=1024)
    assert load_keystore(key.path, "s3cret").private_key == KEY


def test_wrong_password_and_loose_permissions_are_refused(tmp_path: Path) -> None:
    key = create_keystore(tmp_path, "s3cret", private_key=KEY, kdf="pbkdf2", iterations=1024)
    assert key.path is not None
    with pytest.raises(KeyFileError, match="wrong password"):
        load_keystore(key.path, "guess")
    os.chmod(key.path, 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_keystore(key.path, "s3cret")


def test_repr_never_shows_the_private_key() -> None:
    key = DeviceKey.from_private_key(KEY)
    assert KEY.hex() not in repr(key)
    assert key.client_id == client_id_for(key.address) == "dev-" + key.address[2:10].lower()


def test_password_from_environment_or_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTSETTLE_DEVICE_PASSWORD", raising=False)
    monkeypatch.delenv("IOTSETTLE_DEVICE_PASSWORD_FILE", raising=False)
    with pytest.raises(KeyFileError, match="no keystore password"):
        resolve_password()
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    assert resolve_password(secret) == "from-file"
    monkeypatch.setenv("IOTSETTLE_DEVICE_PASSWORD_FILE", str(secret))
    assert resolve_password() == "from-file"
    monkeypatch.setenv("IOTSETTLE_DEVICE_PASSWORD", "from-env")
    assert resolve_password() == "from-env"
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        resolve_password(secret)


def test_sequence_numbers_keep_rising_across_restarts_and_crashes(tmp_path: Path) -> None:
    device = address_of(KEY)
    path = sequence_path(tmp_path / "device.json")
    with SequenceCounter(path, device, block=10) as counter:
        first = [counter.next() for _ in range(25)]
    assert first == list(range(1, 26))
    # A crash after 25 numbers: the next owner starts above everything that may have been handed out.
    with SequenceCounter(path, device, block=10) as counter:
        after = counter.next()
    assert after > 25
    assert after <= 31  # at most one reserved block is skipped


def test_sequence_counter_is_exclusive_and_bound_to_its_device(tmp_path: Path) -> None:
    device = address_of(KEY)
    path = tmp_path / "device.json.seq"
    with SequenceCounter(path, device) as counter:
        counter.next()
        with pytest.raises(KeyFileError, match="in use"):
            SequenceCounter(path, device)
    with pytest.raises(KeyFileError, match="another device"):
        SequenceCounter(path, "0x" + "ab" * 20)
