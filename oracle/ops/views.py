"""Contract state for read-only commands, read without web3 (``iotsettle.oracle.chain.calls``).

A status command needs a handful of ``eth_call``s; importing web3 for them would cost most of a second of the
command's start-up. ``ReadContext`` is the read half of ``OpsContext``: the chain id, the deployment manifest and
one ``ContractReader`` per deployed contract, each checked once against its compiled code before its first read
(as ``verify_manifest`` checks them all for a sending context). The figures are built by the same functions the
web3 operations use (``agreement_view``), so a status reads the same whichever context read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from iotsettle.oracle.chain.artifacts import load_artifact, runtime_matches
from iotsettle.oracle.chain.calls import ContractReader, read
from iotsettle.oracle.chain.endpoints import Endpoints
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.chain.rpc import TRANSPORT_ERRORS, RpcClient, unreachable
from iotsettle.oracle.config import Config, endpoint
from iotsettle.oracle.ops.amounts import ZERO_ADDRESS, TokenInfo
from iotsettle.oracle.ops.vocabulary import AGREEMENT_STATUSES, ESCROW_STATES
from iotsettle.oracle.protocol import batch_tree
from iotsettle.oracle.protocol.errors import ChainError, DeploymentError

BILLING = "MeteredBilling"
OPTIMISTIC_BILLING = "OptimisticBilling"
ESCROW = "DeliveryEscrow"
_ETH_INFO = TokenInfo(ZERO_ADDRESS, "ETH", 18)


@dataclass(frozen=True)
class ReadContext:
    config: Config
    rpc: RpcClient
    chain_id: int
    manifest: dict[str, Any]
    _readers: dict[str, ContractReader] = field(default_factory=dict, compare=False, repr=False)

    def address(self, name: str) -> str:
        entry = self.manifest["contracts"].get(name)
        if entry is None:
            raise DeploymentError(f"{name} is not deployed on chain {self.chain_id}; run `iotsettle deploy`")
        return str(entry["address"])

    def reader(self, name: str) -> ContractReader:
        """The deployed contract ``name``, its code checked against the artifact on first use."""
        if name not in self._readers:
            address = self.address(name)
            artifact = load_artifact(self.config, name)
            code = self.rpc.call("eth_getCode", [address, "latest"])
            if not runtime_matches(artifact, bytes.fromhex(str(code)[2:])):
                raise DeploymentError(f"{name} at {address} does not hold the compiled code; run `iotsettle deploy`")
            self._readers[name] = ContractReader(self.rpc, address, artifact["abi"])
        return self._readers[name]


def open_reads(config: Config, rpc_url: str | None = None) -> ReadContext:
    """Connect to an http(s) endpoint, check the chain id and the manifest's genesis, load the manifest."""
    pool = Endpoints.from_config(config, rpc_url)
    rpc = RpcClient(timeout=config.chain.timeout, endpoints=pool)
    rpc.check_heads()
    url = pool.current if len(pool) == 1 else endpoint(pool.current)
    try:
        answer = rpc("eth_chainId", [])
    except TRANSPORT_ERRORS as exc:
        raise unreachable(url, exc) from None
    if "result" not in answer:
        raise ChainError(f"{url} does not answer eth_chainId: {answer.get('error')}")
    chain_id = int(answer["result"], 16)
    expected = config.chain.chain_id
    if expected and chain_id != expected:
        raise ChainError(f"{url} is chain {chain_id}, but the configuration expects chain {expected}")
    manifest = load_manifest(config, chain_id)
    genesis = manifest.get("genesisHash")
    if genesis and rpc.header(0).get("hash") != genesis:
        raise DeploymentError(
            f"chain {chain_id} at {url} is not the chain the manifest was written for "
            "(different genesis block: a fresh node?); run `iotsettle deploy` again"
        )
    return ReadContext(config, rpc, chain_id, manifest)


@dataclass(frozen=True)
class EscrowView:
    escrow_id: int
    buyer: str
    seller: str
    device: str
    token: str
    amount: int
    destination: str  # 0x-hex bytes32
    created_at: int
    deadline: int
    temperature_limit: int  # centi-°C
    penalty_bps: int
    state: str
    delivery_seq: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["amount"] = str(self.amount)
        return out


def escrow_view(escrow_id: int, chain_id: int, raw: Any) -> EscrowView:
    """The view of ``escrowOf(escrow_id)`` (``raw``, as web3 returns it)."""
    state = ESCROW_STATES[int(raw[10])] if int(raw[10]) < len(ESCROW_STATES) else str(raw[10])
    if state == "none":
        raise ChainError(f"escrow {escrow_id} does not exist on chain {chain_id}")
    return EscrowView(
        escrow_id,
        raw[0],
        raw[1],
        raw[2],
        raw[3],
        int(raw[4]),
        "0x" + bytes(raw[5]).hex(),
        int(raw[6]),
        int(raw[7]),
        int(raw[8]),
        int(raw[9]),
        state,
        int(raw[11]),
    )


@dataclass(frozen=True)
class AgreementView:
    agreement_id: int
    provider: str
    consumer: str
    device: str
    token: str
    tariff_id: int
    status: str
    notice_period: int
    close_at: int
    start_value: int
    last_value: int
    last_seq: int
    last_timestamp: int
    prepaid: int
    arrears: int
    deposited: int
    withdrawn: int
    earnings: int

    @property
    def billed(self) -> int:
        """Everything billed so far: earnings withdrawn or not (refunds leave the deposit on close)."""
        return self.earnings + self.withdrawn

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("agreement_id", "prepaid", "arrears", "deposited", "withdrawn", "earnings"):
            out[key] = str(out[key])
        out["billed"] = str(self.billed)
        return out


def agreement_view(agreement_id: int, chain_id: int, raw: Any, earnings: int) -> AgreementView:
    """The view of ``agreementOf(agreement_id)`` (``raw``, as web3 returns it) and ``earningsOf``."""
    status = int(raw[5])
    if status == 0:
        raise ChainError(f"agreement {agreement_id} does not exist on chain {chain_id}")
    (
        notice_period,
        close_at,
        start_value,
        last_value,
        last_seq,
        last_timestamp,
        prepaid,
        arrears,
        deposited,
        withdrawn,
    ) = (int(x) for x in raw[6:])
    return AgreementView(
        agreement_id,
        raw[0],
        raw[1],
        raw[2],
        raw[3],
        int(raw[4]),
        AGREEMENT_STATUSES[status] if status < len(AGREEMENT_STATUSES) else str(status),
        notice_period,
        close_at,
        start_value,
        last_value,
        last_seq,
        last_timestamp,
        prepaid,
        arrears,
        deposited,
        withdrawn,
        int(earnings),
    )


@dataclass(frozen=True)
class AgreementStatus:
    """What `agreement status` shows: the agreement, its token, its mode and the seconds after closeAt before a
    close refunds (the settlement grace, or OptimisticBilling's ``closeDelay``: the grace, a challenge window and
    a grace to claim)."""

    agreement: AgreementView
    token: TokenInfo
    close_delay: int
    mode: str


def agreement_status(ctx: ReadContext, agreement_id: int) -> AgreementStatus:
    """An agreement, its token and the close delay: two batch requests (the token is known after the first).
    OptimisticBilling's ids carry ``batch_tree.AGREEMENT_ID_FLAG``; the others are MeteredBilling's."""
    optimistic = batch_tree.is_optimistic(agreement_id)
    billing = ctx.reader(OPTIMISTIC_BILLING if optimistic else BILLING)
    calls = [(billing, "agreementOf", (agreement_id,)), (billing, "earningsOf", (agreement_id,))]
    delay_call = (billing, "closeDelay", ()) if optimistic else (billing, "SETTLEMENT_GRACE", ())
    raw, earnings, delay = read(ctx.rpc, [*calls, delay_call])
    view = agreement_view(agreement_id, ctx.chain_id, raw, earnings)
    return AgreementStatus(view, token_of(ctx, view.token), int(delay), "optimistic" if optimistic else "direct")


def token_of(ctx: ReadContext, address: str) -> TokenInfo:
    """Symbol and decimals of the token at ``address`` (the zero address is ETH)."""
    if address == ZERO_ADDRESS:
        return _ETH_INFO
    erc20 = ContractReader(ctx.rpc, address, load_artifact(ctx.config, "TestToken")["abi"])
    try:
        symbol, decimals = read(ctx.rpc, [(erc20, "symbol", ()), (erc20, "decimals", ())])
    except (ChainError, ValueError, OverflowError):
        raise ChainError(f"{address} is not an ERC-20 token on chain {ctx.chain_id}") from None
    return TokenInfo(address, str(symbol), int(decimals))


@dataclass(frozen=True)
class EscrowStatus:
    """What `escrow status` shows: the escrow, its token, and the first second the buyer may refund it."""

    escrow: EscrowView
    token: TokenInfo
    refundable_from: int


def escrow_status(ctx: ReadContext, escrow_id: int) -> EscrowStatus:
    """An escrow, its token and when it becomes refundable (strictly after deadline + the settlement grace)."""
    escrow = ctx.reader(ESCROW)
    raw, grace = read(ctx.rpc, [(escrow, "escrowOf", (escrow_id,)), (escrow, "SETTLEMENT_GRACE", ())])
    view = escrow_view(escrow_id, ctx.chain_id, raw)
    return EscrowStatus(view, token_of(ctx, view.token), view.deadline + int(grace) + 1)
