"""The project's benchmark (``scripts/bench``): gas per settled event, oracle ingest throughput, end-to-end latency
and a naive one-transaction-per-event relay, all in one run on one fresh local stack. docs/BENCHMARKS.md has the
figures and the method."""
