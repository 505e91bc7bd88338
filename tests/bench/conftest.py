"""Fixtures of the benchmark smoke tests: the benchmark's stack on the session deployment, provisioned small, and a
watcher of settled readings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import e2e
from bench.stack import BenchStack, provision, provision_products, topic_of


@pytest.fixture(scope="module")
def stack(deployment: Any, anvil: Any, mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> BenchStack:
    bench = BenchStack(
        deployment.config, anvil, mosquitto, deployment.chain, deployment.manifest, tmp_path_factory.mktemp("bench")
    )
    provision(bench, meters=40, trackers=4, escrows_per_tracker=3)
    provision_products(bench, vehicles=4, stations=4)
    return bench


@pytest.fixture
def watcher(stack: BenchStack) -> Iterator[e2e.Watcher]:
    billing = stack.ctx_contract("MeteredBilling")
    watch = e2e.Watcher(stack.config.chain.rpc_url, {topic_of(billing, "ReadingsSettled"): billing.address.lower()})
    watch.start()
    yield watch
    watch.stop()
