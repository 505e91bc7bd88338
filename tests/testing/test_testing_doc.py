"""docs/TESTING.md's tests run as a user runs them: copied into an empty folder, `pytest` in a process of its own,
with nothing but the installed plugin (no conftest, no ini file of this repository)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.kit.stack import REPO

PAGE = REPO / "docs" / "TESTING.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def _run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Autoloading off and the plugin named: the same whether or not this interpreter's iotsettle was installed
    # with the pytest11 entry point (an editable install made before it was added has none).
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTSETTLE_")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "iotsettle.oracle.testing.plugin",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_page_shows_a_complete_user_test_of_about_20_lines() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 1
    first = blocks[0]
    assert "def test_" in first and 15 <= len(first.splitlines()) <= 30
    for fixture in ("deployment", "register_device", "oracle_daemon", "publisher", "paid"):
        assert fixture in first, f"the first example does not use {fixture}"


# run after the page's tests (files are collected in name order): notes the processes the session started
PIDS_TEST = """
def test_zz_note_the_processes(anvil, mosquitto, oracle_daemon):
    open("pids.txt", "w").write(f"{anvil.pid()} {mosquitto.pid()} {oracle_daemon.proc.pid}")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_documented_tests_pass_in_a_fresh_folder(tmp_path: Path) -> None:
    blocks = _python_blocks()
    for number, block in enumerate(blocks):
        (tmp_path / f"test_doc_{number}.py").write_text(block)
    (tmp_path / "test_zz_pids.py").write_text(PIDS_TEST)
    result = _run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(blocks) + 1} passed" in result.stdout, result.stdout[-2000:]
    # anvil, mosquitto and the daemon were stopped when the session ended
    pids = [int(pid) for pid in (tmp_path / "pids.txt").read_text().split()]
    assert len(pids) == 3
    assert not [pid for pid in pids if _alive(pid)]


def test_a_broken_copy_of_the_example_fails(tmp_path: Path) -> None:
    """The run above can fail: the same test expecting the seller to be paid twice the escrow is reported failed."""
    block = _python_blocks()[0]
    broken = block.replace(
        "withdrawable(ctx, eth, seller.address) == 10**18", "withdrawable(ctx, eth, seller.address) == 2"
    )
    assert broken != block
    (tmp_path / "test_doc_broken.py").write_text(broken)
    result = _run_pytest(tmp_path)
    assert result.returncode == 1 and "1 failed" in result.stdout, result.stdout[-2000:]
