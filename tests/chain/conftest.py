"""The chain tests use the session's anvil, configuration and deployment (tests/conftest.py) and otherwise start what
they check themselves (nodes in the test's folder, keystores, configurations from ``tests.kit.stack.make_config``)."""
