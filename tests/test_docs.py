"""The documentation's commands run as written: every `iotsettle ...` line in the user-facing pages names a command
that exists and only options that command takes.

The commands are read from fenced blocks: every line of a ``sh``/``shell``/``bash``/``console`` block, and in a
``text`` block (a transcript) the lines typed at a ``$`` prompt and the lines that start with ``iotsettle`` (commands
the demo prints). Each one is walked down the real click tree (``iotsettle.cli.main.cli``) without running it: no
node, no network. A line like ``iotsettle escrow create | fund | status`` lists sibling commands, and each of them
is checked too.

Beside the commands: docs/CLI.md shows every command of the tree and the README's index names every group; the
Python examples import names the package has; and the links between the pages lead to a file and a heading.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from iotsettle.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/CLI.md", "docs/DEMO.md", "docs/OPERATIONS.md", "docs/SCALING.md")
#: pages whose Python snippets import the package: each import must name a module and a name that exist
SNIPPET_PAGES = (*PAGES, "docs/PROTOCOL.md", "docs/TESTING.md")
SHELL_BLOCKS = {"sh", "shell", "bash", "console"}
#: programs a documented command is piped into; any other word after `|` is a sibling command of the line
PIPE_PROGRAMS = {"jq", "grep", "head", "tail", "tee", "sort", "wc", "less", "xargs", "python", "sed", "awk", "cut"}
_SEPARATOR = re.compile(r"[();<>|&]+")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Line:
    page: str
    number: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.number}: {self.text.strip()}"


def command_lines(page: str, text: str) -> list[Line]:
    """The lines of ``text`` that hold `iotsettle` commands, by the rules in the module docstring."""
    found: list[Line] = []
    language: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(raw)
        if fence:
            language = None if language is not None else fence.group(2).lower()
            continue
        if language is None:
            continue
        stripped = raw.strip()
        if language in SHELL_BLOCKS:
            stripped = stripped.removeprefix("$ ")
        elif language == "text" and stripped.startswith("$ "):
            stripped = stripped[2:]
        elif language != "text" or not stripped.startswith("iotsettle "):
            continue
        if re.search(r"(^|[\s(/])iotsettle\s", stripped + " "):
            found.append(Line(page, number, stripped))
    return found


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def invocations(text: str) -> list[list[str]]:
    """Each `iotsettle` invocation on a shell line, as its argument list; sibling commands after `|` (index
    notation, ``iotsettle node up | status | down``) become invocations of their own under the same parent."""
    tokens = _tokens(text)
    found: list[list[str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] != "iotsettle" and not tokens[i].endswith("/iotsettle"):
            i += 1
            continue
        args: list[str] = []
        i += 1
        while i < len(tokens) and not _SEPARATOR.fullmatch(tokens[i]):
            args.append(tokens[i])
            i += 1
        found.append(args)
        # `| word ...` right after an invocation: a sibling of its last command word, unless word is a program
        path = _command_words(args)
        while i + 1 < len(tokens) and tokens[i] == "|" and tokens[i + 1] not in PIPE_PROGRAMS and path:
            i += 1
            sibling: list[str] = []
            while i < len(tokens) and not _SEPARATOR.fullmatch(tokens[i]):
                sibling.append(tokens[i])
                i += 1
            if sibling and sibling[0] not in ("...", "…"):
                found.append([*path[:-1], *sibling])
    return found


def _names(group: click.Group) -> list[str]:
    """The subcommands of ``group``; the root group loads its commands' modules only when asked, so ask."""
    return group.list_commands(click.Context(group))


def _sub(group: click.Group, name: str) -> click.Command | None:
    return group.get_command(click.Context(group), name)


def _command_words(args: list[str]) -> list[str]:
    """The command path at the start of ``args`` (``["escrow", "create"]``), as far as the tree has it."""
    command: click.Command = cli
    words: list[str] = []
    for arg in args:
        sub = _sub(command, arg) if isinstance(command, click.Group) else None
        if sub is None:
            break
        command = sub
        words.append(arg)
    return words


def _options(command: click.Command) -> dict[str, click.Parameter]:
    names: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def check(args: list[str]) -> list[str]:
    """What is wrong with ``iotsettle <args>``: an unknown command or an option the command does not take."""
    problems: list[str] = []
    command: click.Command = cli
    path = ["iotsettle"]
    rest = [a.strip("[]") for a in args]
    while isinstance(command, click.Group):
        options = _options(command)
        if not rest:
            return problems  # a group named alone (it prints its help)
        word = rest.pop(0)
        if word in ("...", "…"):
            return problems  # "any command of this group"
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            if name not in options and name not in ("--help", "-h", "--version"):
                problems.append(f"{' '.join(path)} has no option {name}")
            param = options.get(name)
            if isinstance(param, click.Option) and not (param.is_flag or param.count) and "=" not in word and rest:
                rest.pop(0)
            continue
        found = _sub(command, word)
        if found is None:
            problems.append(f"{' '.join(path)} has no command {word!r} (it has: {', '.join(_names(command))})")
            return problems
        command = found
        path.append(word)
    options = _options(command)
    for word in rest:
        if word.startswith("--") or re.fullmatch(r"-[A-Za-z]", word):
            name = word.split("=", 1)[0]
            if name not in options and name not in ("--help", "-h"):
                problems.append(f"{' '.join(path)} has no option {name}")
    return problems


def _documented() -> list[tuple[Line, list[str]]]:
    out = []
    for page in PAGES:
        for line in command_lines(page, (REPO / page).read_text()):
            out.extend((line, args) for args in invocations(line.text))
    return out


DOCUMENTED = _documented()


def test_the_pages_document_commands() -> None:
    """A guard on the extraction itself: if the pages moved or the fences changed, this test must not pass empty."""
    pages = {line.page for line, _ in DOCUMENTED}
    assert pages == set(PAGES), f"no iotsettle command found in {set(PAGES) - pages}"
    assert len(DOCUMENTED) > 100


@pytest.mark.parametrize(("line", "args"), DOCUMENTED, ids=[str(line)[:120] for line, _ in DOCUMENTED])
def test_documented_command_exists(line: Line, args: list[str]) -> None:
    problems = check(args)
    assert not problems, f"{line}\n  " + "\n  ".join(problems)


def test_every_command_group_is_in_the_readme_index() -> None:
    """The README's command index names every top-level command, and docs/CLI.md describes each one."""
    readme = (REPO / "README.md").read_text()
    cli_page = (REPO / "docs/CLI.md").read_text()
    names = _names(cli)
    assert len(names) > 10  # the lazy root group lists its commands without importing them
    for name in names:
        assert f"iotsettle {name}" in readme, f"README.md's command index does not name `iotsettle {name}`"
        assert f"iotsettle {name}" in cli_page, f"docs/CLI.md does not name `iotsettle {name}`"


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(command, click.Group):
        return [path]
    return [leaf for name in _names(command) for leaf in _leaves(_sub(command, name), (*path, name))]


def test_docs_cli_names_every_command() -> None:
    """docs/CLI.md is the reference: each command of the tree appears in one of its command lines."""
    documented = {tuple(_command_words(args)) for line, args in DOCUMENTED if line.page == "docs/CLI.md"}
    missing = [" ".join(leaf) for leaf in _leaves(cli) if leaf not in documented]
    assert not missing, f"docs/CLI.md never shows: {', '.join('iotsettle ' + m for m in missing)}"


def _snippet_imports() -> list[tuple[str, str, str]]:
    """(page, module, name) of every `from iotsettle... import name` in a ```python block of the pages."""
    found: list[tuple[str, str, str]] = []
    for page in SNIPPET_PAGES:
        for block in re.findall(r"^```python\n(.*?)^```", (REPO / page).read_text(), re.S | re.M):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("iotsettle"):
                    found.extend((page, node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.extend((page, a.name, "") for a in node.names if a.name.startswith("iotsettle"))
    return sorted(set(found))


SNIPPET_IMPORTS = _snippet_imports()


def test_the_snippets_import_the_package() -> None:
    # Python shows only where Python is the subject: a device program (PROTOCOL.md) and a user's test (TESTING.md).
    assert {page for page, _, _ in SNIPPET_IMPORTS} == {"docs/PROTOCOL.md", "docs/TESTING.md"}


@pytest.mark.parametrize(("page", "module", "name"), SNIPPET_IMPORTS)
def test_snippet_import_exists(page: str, module: str, name: str) -> None:
    """A Python example in the docs imports what the package has, under its installed name."""
    imported = importlib.import_module(module)
    submodule = hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
    assert not name or hasattr(imported, name) or submodule, f"{page}: `from {module} import {name}`: no such name"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_resolve() -> None:
    """A relative link of README.md or docs/*.md names a file that exists and, with #anchor, one of its headings."""
    broken = []
    for page in ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]:
        text = re.sub(r"^```.*?^```", "", (REPO / page).read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / page).parent / path if path else REPO / page
            if not file.exists():
                broken.append(f"{page}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
                if anchor not in headings:
                    broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("iotsettle escrow craete --amount 1", "no command 'craete'"),
        ("iotsettle escrow create --ammount 1", "no option --ammount"),
        ("iotsettle node up | stauts | down", "no command 'stauts'"),
        ("X=$(iotsettle policy offer --json --holdr 0x1 | jq -r .id)", "no option --holdr"),
    ],
)
def test_the_check_catches_a_typo(text: str, problem: str) -> None:
    problems = [p for args in invocations(text) for p in check(args)]
    assert any(problem in p for p in problems), problems
