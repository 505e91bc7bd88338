"""Credit profiles: an owner's settlement history re-derived from chain events only, exportable and verifiable.

Three parts, kept apart so the rules can be tested and re-run without a node: ``scan`` fetches the logs,
``derive`` turns them into figures with their evidence, ``document`` writes the export and verifies one.
"""
