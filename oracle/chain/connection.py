"""Chain access: connect to the RPC endpoint(s) and load the sending key (``send`` sends with it).

With several endpoints (``[chain] rpc_urls``) web3 talks through a ``FailoverProvider``: the same ``RpcClient`` and
``Endpoints`` as the raw calls, so every caller fails over in one place (``endpoints``); ``connect`` reads every
endpoint's head once and starts on a fresh one.

Keys are never defaults, with one exception: on a local chain (anvil 31337, ganache 1337) and only when no
key is configured, a well-known anvil development account is used so a fresh machine works — account 0 for the
CLI and deploy (``load_sender``), the last one (account 9) for the oracle daemon's relayer (``load_relayer``): the
daemon keeps its own nonces, and a CLI command sent from the same account would take one from under it.
"""

from __future__ import annotations

import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keyfile import decode_keyfile_json
from iotsettle.oracle.chain.endpoints import Endpoints
from iotsettle.oracle.chain.rpc import RpcClient, unreachable
from iotsettle.oracle.chain.signer import RemoteSigner, Signer
from iotsettle.oracle.config import LOCAL_CHAIN_IDS, Config, endpoint
from iotsettle.oracle.protocol.errors import ChainError, KeyFileError
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3Exception
from web3.providers import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

log = logging.getLogger(__name__)

#: The first accounts of anvil's default mnemonic "test test test test test test test test test test test junk".
#: Public knowledge, so only ever used on a local chain.
ANVIL_DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)
#: Account 9 of the same mnemonic (0xa0Ee7A142d267C1f36714E4a8F75612F20a79720): the daemon's relayer on a local
#: chain when no key is configured. No CLI default, --dev-account choice or test party sends from it.
RELAYER_DEV_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"


@dataclass(frozen=True)
class Chain:
    w3: Web3
    chain_id: int
    rpc_url: str

    def genesis_hash(self) -> str:
        return self.w3.eth.get_block(0)["hash"].to_0x_hex()

    @property
    def is_local(self) -> bool:
        return self.chain_id in LOCAL_CHAIN_IDS


class FailoverProvider(JSONBaseProvider):
    """A web3 provider over several endpoints of one chain: each request goes through ``RpcClient``, which sends
    it to ``endpoints.current`` and to the next endpoint when that one does not answer."""

    def __init__(self, endpoints: Endpoints, timeout: float) -> None:
        super().__init__()
        self.endpoints = endpoints
        self.client = RpcClient(endpoints=endpoints, timeout=timeout)
        self._request_kwargs = {"timeout": timeout}  # what RpcClient(w3) reads its timeout from

    @property
    def endpoint_uri(self) -> str:
        return self.endpoints.current

    def _plain(self, method: RPCEndpoint, params: Any) -> dict[str, Any]:
        """The request as plain JSON (web3 passes bytes and HexBytes, which its own encoder writes as hex)."""
        request: dict[str, Any] = json.loads(self.encode_rpc_request(method, params))
        return request

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        request = self._plain(method, params)
        return cast(RPCResponse, self.client(request["method"], request["params"]))

    def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse] | RPCResponse:
        plain = [self._plain(method, params) for method, params in requests]
        answers: Any = self.client._send(plain)
        if isinstance(answers, list):
            answers.sort(key=lambda a: a.get("id", 0) if isinstance(a, dict) else 0)
        return cast(list[RPCResponse] | RPCResponse, answers)


def endpoints_of(w3: Web3) -> Endpoints | None:
    """The endpoints a web3 instance fails over between (None for a single endpoint)."""
    pool = getattr(w3.provider, "endpoints", None)
    return pool if isinstance(pool, Endpoints) else None


def connect(config: Config, rpc_url: str | None = None) -> Chain:
    """Connect and check the chain id against ``[chain] chain_id``; raises ChainError in one line.

    ``rpc_url`` (a command's ``--rpc-url``) is the one endpoint used; without it the configured endpoints are, with
    failover when there are several."""
    pool = Endpoints.from_config(config, rpc_url)
    urls = pool.urls
    if len(urls) > 1:
        provider = FailoverProvider(pool, config.chain.timeout)
        provider.client.check_heads()
        w3 = Web3(provider)
    else:
        w3 = Web3(HTTPProvider(urls[0], request_kwargs={"timeout": config.chain.timeout}))
    url = str(getattr(w3.provider, "endpoint_uri", urls[0]))
    try:
        chain_id = w3.eth.chain_id
    except (requests.RequestException, OSError, Web3Exception, ValueError) as exc:
        raise unreachable(url if len(urls) == 1 else f"{len(urls)} endpoints, last {endpoint(url)}", exc) from None
    expected = config.chain.chain_id
    if expected and chain_id != expected:
        raise ChainError(f"{url} is chain {chain_id}, but the configuration expects chain {expected}")
    return Chain(w3, chain_id, url)


def _read_password(config: Config) -> str:
    if config.chain.password:
        return config.chain.password
    if config.chain.password_file:
        path = config.path(config.chain.password_file)
        try:
            return path.read_text().rstrip("\n")
        except OSError as exc:
            raise KeyFileError(f"cannot read the password file {path}: {exc.strerror}") from None
    raise KeyFileError("the keystore needs a password: set IOTSETTLE_CHAIN_PASSWORD or [chain] password_file")


def _from_key(key: str | bytes) -> LocalAccount:
    """``Account.from_key``, typed: eth_account wraps it in a ``combomethod``, whose result mypy sees as Any."""
    account: LocalAccount = Account.from_key(key)
    return account


def load_keystore(path: Path, password: str) -> LocalAccount:
    """Decrypt a Web3 Secret Storage file; refuses files readable by other users."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    try:
        keyfile = json.loads(path.read_text())
        key = decode_keyfile_json(keyfile, password.encode())
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise KeyFileError(f"{path} is not a Web3 Secret Storage key file ({exc})") from None
    except ValueError:
        raise KeyFileError(f"wrong password for the key file {path}") from None
    return _from_key(key)


def load_sender(config: Config, chain: Chain) -> Signer:
    """The account that signs transactions: the remote signer (``[chain] signer = "remote"``) → keystore → raw key
    from the environment → local dev key (account 0)."""
    return remote_signer(config) or _configured_key(config, chain, ANVIL_DEV_KEYS[0])


def load_relayer(config: Config, chain: Chain) -> Signer:
    """The oracle daemon's relayer: the configured signer as for ``load_sender``; with none, on a local chain, its
    own development account (``RELAYER_DEV_KEY``), never the CLI's default sender."""
    return remote_signer(config) or _configured_key(config, chain, RELAYER_DEV_KEY)


def load_lanes(config: Config, first: Signer) -> tuple[Signer, ...]:
    """The relayer keys beside ``first`` (``[oracle] relayer_keys`` keystores, then ``relayer_private_keys``), each a
    nonce lane of its own; raises KeyFileError naming the file, or a key by its position, never the key itself."""
    lanes: list[Signer] = []
    if config.oracle.relayer_keys:
        password = _read_password(config)
        lanes += [load_keystore(config.path(path), password) for path in config.oracle.relayer_keys]
    for number, key in enumerate(config.oracle.relayer_private_keys, 1):
        try:
            lanes.append(_from_key(key))
        except (ValueError, TypeError):
            raise KeyFileError(
                f"[oracle] relayer_private_keys: key {number} is not a 32-byte hex private key"
            ) from None
    seen = {first.address}
    for lane in lanes:
        if lane.address in seen:
            raise KeyFileError(f"relayer {lane.address} is configured twice: each relayer key must be another account")
        seen.add(lane.address)
    return tuple(lanes)


def remote_signer(config: Config) -> RemoteSigner | None:
    """The ``eth_signTransaction`` signer of ``[chain] signer_url`` when ``[chain] signer = "remote"``."""
    if config.chain.signer != "remote":
        return None
    return RemoteSigner(config.chain.signer_url, config.chain.signer_address, config.chain.timeout)


def _configured_key(config: Config, chain: Chain, local_default: str) -> LocalAccount:
    if config.chain.keystore:
        return load_keystore(config.path(config.chain.keystore), _read_password(config))
    if config.chain.private_key:
        try:
            return _from_key(config.chain.private_key)
        except (ValueError, TypeError):
            raise KeyFileError("IOTSETTLE_CHAIN_PRIVATE_KEY is not a 32-byte hex private key") from None
    if chain.is_local:
        return _from_key(local_default)
    raise KeyFileError(
        f"chain {chain.chain_id} is not a local chain: give a sending key with [chain] keystore "
        "(+ IOTSETTLE_CHAIN_PASSWORD) or IOTSETTLE_CHAIN_PRIVATE_KEY"
    )
