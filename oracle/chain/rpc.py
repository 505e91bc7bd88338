"""Raw JSON-RPC to a node: every read that must skip web3's per-field result formatting goes through ``RpcClient``.

web3 formats every field of every result (a 100-log receipt costs ~30 ms there) and its HTTP provider asks
``requests`` to consult proxy variables and ~/.netrc on every call (``trust_env``). The settlement hot path, log
scans over a whole deployment and the demo's live view cannot spare that, so they speak JSON-RPC themselves:
over one ``requests`` session per thread for an http(s) endpoint, through the web3 provider's own
``make_request`` for anything else (an IPC or websocket endpoint, a provider wrapped by a test).

Results are the node's JSON as it sent it (hex strings). A node that answers with an error raises
``NodeRefused``; one that does not answer raises ``ChainError``.

With several endpoints (``endpoints.Endpoints``, from ``[chain] rpc_urls``) a request that gets no answer is sent
again to the next endpoint, and ``check_heads`` moves away from a stale one: failover happens here, once, for every
caller (web3 calls too, through ``connection.FailoverProvider``).
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import requests
from eth_hash.auto import keccak
from iotsettle.oracle.chain.endpoints import Endpoints
from iotsettle.oracle.config import printable_url
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

#: block headers read per batch request when timing many blocks
BLOCKS_PER_BATCH = 200
#: the longest node message kept in an error
_MESSAGE_CHARS = 200
#: seconds a head check waits for each endpoint (a frozen one must not hold the check for the full RPC timeout)
HEAD_CHECK_TIMEOUT = 3.0

Progress = Callable[[str], None]
#: what a call that got no answer raises over http(s); a call through a web3 provider adds web3's own root
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (requests.RequestException, OSError, ValueError)
#: what a head check counts as no usable answer: no answer, or one without a block number
_HEAD_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, KeyError, TypeError)


def _provider_errors() -> tuple[type[BaseException], ...]:
    """``TRANSPORT_ERRORS`` and, once web3 is loaded, its exception root (which its providers raise).

    Read from ``sys.modules`` rather than imported: a client made from a web3 instance has web3 loaded already, and
    one made from a URL must not load it (importing web3 costs most of a second, and the CLI's read-only commands
    read through this client without it)."""
    exceptions = sys.modules.get("web3.exceptions")
    root = getattr(exceptions, "Web3Exception", None)
    return (*TRANSPORT_ERRORS, root) if isinstance(root, type) and issubclass(root, BaseException) else TRANSPORT_ERRORS


class NodeRefused(ChainError):
    """The node answered a call with a JSON-RPC error (as opposed to not answering); ``data`` is its error data."""

    def __init__(self, method: str, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(f"{method} refused: {message}")
        self.method = method
        self.node_message = message
        self.code = code
        self.data = data


def unreachable(url: str, exc: BaseException) -> ChainError:
    """The error for an endpoint that does not answer at all (refused, timed out, not a JSON-RPC server)."""
    return ChainError(  # the URL without its path or query: hosted endpoints keep API keys there
        f"cannot reach the RPC endpoint {printable_url(url)} ({type(exc).__name__}); is the node running? "
        "(`iotsettle node up` starts a local one)"
    )


def one_sentence(message: object) -> str:
    """A node's error message cut to its first line and sentence, at most a couple of hundred characters."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else "no message"
    end = text.find(". ")
    if end > 0:
        text = text[:end]
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def node_message(exc: BaseException) -> str:
    """What the node said, in one sentence, for an exception a web3 call raised: the ``message`` of its JSON-RPC
    error — never the JavaScript ``stack`` ganache sends with it — else the exception's own text."""
    response = getattr(exc, "rpc_response", None)
    error: object = response.get("error") if isinstance(response, dict) else None
    if error is None and exc.args:
        error = exc.args[0]
    if isinstance(error, str) and error.startswith("{"):
        with contextlib.suppress(ValueError, SyntaxError):  # web3 keeps the error member as its repr
            error = ast.literal_eval(error)
    if isinstance(error, dict):
        return one_sentence(error.get("message", "no message"))
    return one_sentence(error if isinstance(error, str) else exc)


def refusal(method: str, error: object) -> NodeRefused:
    """The ``NodeRefused`` for a JSON-RPC ``error`` member."""
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict):
            data = data.get("data", data)
        code = error.get("code")
        return NodeRefused(
            method, one_sentence(error.get("message", error)), code if isinstance(code, int) else None, data
        )
    return NodeRefused(method, one_sentence(error))


class RpcClient:
    """JSON-RPC calls to the node behind a web3 instance (or an http(s) URL).

    ``client(method, params)`` is the transport: the answer's envelope as the node sent it, transport failures
    raised as they come (the submitter classifies them). ``client.call`` is what most callers want: the result,
    or ``NodeRefused`` / ``ChainError``. ``calls`` counts requests made (a batch counts once).

    ``endpoints`` (or a web3 instance over a ``FailoverProvider``) gives several http(s) endpoints of one chain: a
    request that gets no answer goes to the next one (see ``endpoints``).
    """

    def __init__(
        self,
        w3: Any = None,
        *,
        url: str | None = None,
        timeout: float | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self._provider: Any = getattr(w3, "provider", None)
        self.endpoints: Endpoints | None = endpoints or getattr(self._provider, "endpoints", None)
        if self.endpoints is not None:
            self._provider = None
            url = self.endpoints.current
        uri = url or str(getattr(self._provider, "endpoint_uri", "") or "")
        self._url = uri if uri.startswith(("http://", "https://")) else None
        if self._url is None and self._provider is None:
            raise ChainError(f"no JSON-RPC endpoint to call ({uri or 'none given'})")
        if timeout is None:
            kwargs = getattr(self._provider, "_request_kwargs", None) or {}
            timeout = kwargs.get("timeout", 10.0) if isinstance(kwargs, dict) else 10.0
        self._timeout = timeout
        self._local = threading.local()
        self._ids = itertools.count(1)
        self.calls = 0

    # ------------------------------------------------------------------------------------------ transport

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def _post(self, url: str, body: Any, timeout: float | None = None) -> Any:
        response = self._session().post(url, json=body, timeout=timeout or self._timeout)
        response.raise_for_status()
        return response.json()

    def _send(self, body: Any) -> Any:
        """POST ``body`` to the endpoint in use; with several, to the next one each time one does not answer."""
        pool = self.endpoints
        if pool is None or len(pool) < 2:
            return self._post(self._url or "", body)
        for attempt in range(len(pool)):
            url = pool.current
            try:
                return self._post(url, body)
            except TRANSPORT_ERRORS as exc:
                if attempt == len(pool) - 1:
                    raise
                pool.failed(url, type(exc).__name__)
        raise AssertionError("unreachable")  # the loop returns or raises

    def check_heads(self) -> None:
        """Read every endpoint's head (``eth_blockNumber``, a short timeout each) and let ``endpoints`` leave a
        stale one; nothing to do with a single endpoint."""
        pool = self.endpoints
        if pool is None or len(pool) < 2:
            return
        heads: list[int | None] = []
        errors: list[str] = []
        for url in pool.urls:
            body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "eth_blockNumber", "params": []}
            try:
                answer = self._post(url, body, timeout=min(self._timeout, HEAD_CHECK_TIMEOUT))
                heads.append(int(answer["result"], 16))
                errors.append("")
            except _HEAD_ERRORS as exc:
                heads.append(None)
                errors.append(type(exc).__name__)
        pool.observe(heads, errors)

    def __call__(self, method: str, params: list[Any]) -> dict[str, Any]:
        """One request; the answer's envelope (``result`` or ``error``) unchanged."""
        self.calls += 1
        if self._url is None:
            return dict(self._provider.make_request(method, params))
        answer = self._send({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        if not isinstance(answer, dict):
            raise ChainError(f"{method}: the node answered {str(answer)[:80]}")
        return answer

    def call(self, method: str, params: list[Any]) -> Any:
        """The result of one call; ``NodeRefused`` when the node answers with an error, ``ChainError`` when it
        does not answer."""
        try:
            answer = self(method, params)
        except _provider_errors() as exc:
            raise ChainError(f"{method} failed: the node did not answer ({type(exc).__name__})") from None
        if "error" in answer:
            raise refusal(method, answer["error"])
        return answer.get("result")

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """The results of several calls sent as one batch request, in order; falls back to one call each when
        the endpoint does not take batches. A refusal of any call raises ``NodeRefused``."""
        if not calls:
            return []
        answers: Any = None
        try:
            if self._url is not None:
                self.calls += 1
                answers = self._send(
                    [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
                )
                if isinstance(answers, list):
                    answers = sorted(answers, key=lambda a: a.get("id", 0) if isinstance(a, dict) else 0)
            elif getattr(self._provider, "make_batch_request", None) is not None:
                self.calls += 1
                answers = self._provider.make_batch_request(list(calls))
        except _provider_errors():
            answers = None
        if not isinstance(answers, list) or len(answers) != len(calls) or not all(isinstance(a, dict) for a in answers):
            return [self.call(method, params) for method, params in calls]
        for (method, _), answer in zip(calls, answers, strict=True):
            if "error" in answer:
                raise refusal(method, answer["error"])
        return [answer.get("result") for answer in answers]

    # ------------------------------------------------------------------------------------------ reads

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber", []), 16)

    def chain_id(self) -> int:
        return int(self.call("eth_chainId", []), 16)

    def header(self, block: int | str) -> dict[str, Any]:
        """A block without its transactions (``block`` a number or a tag such as ``latest``)."""
        tag = block if isinstance(block, str) else hex(block)
        result = self.call("eth_getBlockByNumber", [tag, False])
        if result is None:
            raise ChainError(f"block {block} does not exist on this node")
        return dict(result)

    def block_times(self, blocks: Iterable[int], progress: Progress | None = None) -> dict[int, int]:
        """Timestamp of each block, read in batches of ``BLOCKS_PER_BATCH`` headers."""
        wanted = sorted(set(blocks))
        out: dict[int, int] = {}
        for i in range(0, len(wanted), BLOCKS_PER_BATCH):
            part = wanted[i : i + BLOCKS_PER_BATCH]
            headers = self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
            for n, header in zip(part, headers, strict=True):
                if header is None:
                    raise ChainError(f"block {n} does not exist on this node")
                out[n] = int(header["timestamp"], 16)
            if progress is not None and len(wanted) > BLOCKS_PER_BATCH:
                progress(f"block times: {min(i + BLOCKS_PER_BATCH, len(wanted))}/{len(wanted)}")
        return out

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """A transaction's receipt; None while it is not mined (or when the node refuses to say)."""
        try:
            result = self.call("eth_getTransactionReceipt", [tx_hash])
        except NodeRefused:
            return None
        return dict(result) if result else None

    def code_hash(self, address: str) -> str:
        code = self.call("eth_getCode", [address, "latest"])
        return "0x" + keccak(bytes.fromhex(str(code)[2:])).hex()

    def get_logs(
        self, address: str | Sequence[str], start: int, stop: int, topics: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """The logs of ``address`` in blocks ``start``..``stop`` matching ``topics``, as the node sent them.

        Providers cap the results or the span of one call: a refused range is read in halves. A refusal that
        persists down to one block propagates from the first leaf, so this costs at most log2(span) extra calls.
        """
        query = {
            "address": address if isinstance(address, str) else list(address),
            "fromBlock": hex(start),
            "toBlock": hex(stop),
            "topics": list(topics),
        }
        try:
            return list(self.call("eth_getLogs", [query]))
        except NodeRefused:
            if start >= stop:
                raise
        middle = (start + stop) // 2
        return self.get_logs(address, start, middle, topics) + self.get_logs(address, middle + 1, stop, topics)
