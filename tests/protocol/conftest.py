"""The protocol tests are pure: no chain, no broker, no fixture of their own. They read the shared vector files in
tests/vectors (written by scripts/gen-vectors) and docs/PROTOCOL.md."""
