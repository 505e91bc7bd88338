"""A signer outside the process (``[chain] signer = "remote"``): anvil answers ``eth_signTransaction`` for its unlocked
development accounts, which makes it a real remote signer. The one sending path sends what it signs; a signer that
refuses, is away, or signs something other than what was asked is a one-sentence ``SignerError`` and nothing is
sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, load_relayer, load_sender
from iotsettle.oracle.chain.node import Anvil, free_port
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.chain.signer import RemoteSigner
from iotsettle.oracle.config import Config, load_config
from iotsettle.oracle.protocol.errors import ConfigError, SignerError

#: anvil's development account 8 (unlocked in anvil; no test holds its key)
REMOTE = "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"


def remote_config(url: str, address: str = REMOTE) -> Config:
    env = {"SIGNER": "remote", "SIGNER_URL": url, "SIGNER_ADDRESS": address}
    return load_config(env={f"IOTSETTLE_CHAIN_{k}": v for k, v in env.items()}, read_files=False)


def test_the_sending_path_sends_what_the_remote_signer_signed(anvil: Anvil, chain: Any) -> None:
    signer = load_sender(remote_config(anvil.endpoint), chain)
    assert isinstance(signer, RemoteSigner) and signer.address == REMOTE
    assert load_relayer(remote_config(anvil.endpoint), chain).address == REMOTE
    assert not hasattr(signer, "key"), "no private key in this process"
    nonce = chain.w3.eth.get_transaction_count(REMOTE)
    receipt = send(chain, signer, {"to": Account.create().address, "value": 12345})
    sent = chain.w3.eth.get_transaction(receipt["transactionHash"])
    assert receipt["status"] == 1 and sent["from"] == REMOTE and sent["nonce"] == nonce
    # a contract creation (no recipient): runtime code that returns 42
    created = send(chain, signer, {"data": "0x600a600c600039600a6000f3602a60005260206000f3"})
    assert int(chain.w3.eth.call({"to": created["contractAddress"]}).hex(), 16) == 42


def test_a_signer_that_refuses_or_is_away_is_one_sentence(anvil: Anvil, chain: Any) -> None:
    stranger = Account.create().address  # anvil holds no key for it
    with pytest.raises(SignerError, match=r"refused to sign: No Signer available$"):
        send(chain, RemoteSigner(anvil.endpoint, stranger), {"to": stranger, "value": 1})
    with pytest.raises(SignerError, match=r"^the remote signer at http://127.0.0.1:\d+ does not answer$"):
        send(chain, RemoteSigner(f"http://127.0.0.1:{free_port()}/?token=SECRET", REMOTE), {"to": stranger, "value": 1})


@pytest.fixture
def dishonest_signer(anvil: Anvil) -> Iterator[str]:
    """A signer that holds the key of ``ANVIL_DEV_KEYS[4]`` and signs what it was asked at another nonce."""
    account = Account.from_key(ANVIL_DEV_KEYS[4])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            tx = {k: int(v, 16) for k, v in request["params"][0].items() if k not in ("from", "to", "data", "input")}
            tx |= {"to": request["params"][0]["to"], "data": request["params"][0]["data"], "nonce": tx["nonce"] + 5}
            raw = account.sign_transaction(tx).raw_transaction
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x" + bytes(raw).hex()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_signature_of_another_transaction_is_refused_before_it_is_sent(dishonest_signer: str, chain: Any) -> None:
    address = Account.from_key(ANVIL_DEV_KEYS[4]).address
    before = chain.w3.eth.get_transaction_count(address, "pending")
    with pytest.raises(SignerError, match=r"signed a different transaction \(nonce changed\)"):
        send(chain, RemoteSigner(dishonest_signer, address), {"to": Account.create().address, "value": 1})
    assert chain.w3.eth.get_transaction_count(address, "pending") == before, "nothing was sent"


def test_a_remote_signer_needs_its_url_and_account() -> None:
    with pytest.raises(ConfigError, match="signer_url"):
        load_config(env={"IOTSETTLE_CHAIN_SIGNER": "remote"}, read_files=False)
    with pytest.raises(ConfigError, match="signer_address"):
        remote_config("http://127.0.0.1:1", address="")
    with pytest.raises(ConfigError, match="expected keystore or remote"):
        load_config(env={"IOTSETTLE_CHAIN_SIGNER": "hsm"}, read_files=False)
