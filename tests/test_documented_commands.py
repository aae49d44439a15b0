"""Every command the README, docs/ and the Makefile tell a user to run is one the code takes.

Commands are read from the shell code blocks of the Markdown files and from the Makefile's
recipes: each `glimpse ...` must parse with the `glimpse` CLI, each `python -m service ...`
with the service's own parser, each `make TARGET` must name a Makefile target, and the
config files and scripts they name must exist. A flag renamed in the code, or a command
removed, fails here instead of in a reader's shell.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from shell_commands import glimpse_commands, shell_blocks

import service.__main__ as serve
from training.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKEFILE = ROOT / "Makefile"
# Scripts the documents and the Makefile run as they are (`make models`, the tiny path).
SCRIPTS = [ROOT / "scripts" / "train_recipe.sh", ROOT / "scripts" / "train_tiny.sh"]


def documented_shell() -> dict[str, str]:
    """Source name -> the shell text it tells users to run."""
    shell = {doc.relative_to(ROOT).as_posix(): shell_blocks(doc.read_text()) for doc in DOCUMENTS}
    shell.update({s.relative_to(ROOT).as_posix(): s.read_text() for s in SCRIPTS})
    shell["Makefile"] = makefile_recipes()
    return shell


def makefile_variables() -> dict[str, str]:
    """NAME -> default value of the Makefile's `NAME ?= value` lines."""
    return dict(re.findall(r"^(\w+) \?= (.*)$", MAKEFILE.read_text(), flags=re.M))


def makefile_recipes() -> str:
    """The Makefile's recipe lines with $(VARIABLES) at their defaults and every
    `.../bin/glimpse` written as the command `glimpse`."""
    variables = makefile_variables()
    recipes = [line.strip() for line in MAKEFILE.read_text().replace("\\\n", " ").splitlines()
               if line.startswith("\t")]
    text = "\n".join(recipes)
    for _ in range(3):  # variables defined through others
        text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return re.sub(r"\S*/bin/glimpse\b", "glimpse", text)


def makefile_targets() -> set[str]:
    return {target for line in re.findall(r"^([\w .-]+):(?!=)", MAKEFILE.read_text(), flags=re.M)
            for target in line.split()}


SHELL = documented_shell()
GLIMPSE = [(source, argv) for source, text in SHELL.items() for argv in glimpse_commands(text)]


def test_the_documents_hold_the_commands_this_test_reads() -> None:
    sources = {source for source, _ in GLIMPSE}
    assert {"README.md", "docs/results.md", "docs/datasets.md", "Makefile"} <= sources
    assert len(GLIMPSE) >= 50


@pytest.mark.parametrize("source, argv", GLIMPSE,
                         ids=[f"{source}: glimpse {' '.join(a[:2])}" for source, a in GLIMPSE])
def test_each_glimpse_command_parses(source: str, argv: list[str], capsys) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{source}: `glimpse {shlex.join(argv)}` does not parse: "
                    f"{capsys.readouterr().err.strip().splitlines()[-1]}")
    assert args._command
    for value in argv:
        if value.startswith(("configs/", "scripts/")):
            assert (ROOT / value).exists(), f"{source}: {value} does not exist"


def python_m_service_commands() -> list[tuple[str, list[str]]]:
    return [(source, shlex.split(found.split("#")[0]))
            for source, text in SHELL.items()
            for found in re.findall(r"python -m service(.*)", text)]


def test_each_python_m_service_command_parses(capsys) -> None:
    commands = python_m_service_commands()
    assert commands  # docs/service.md shows one
    for source, argv in commands:
        try:
            serve.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{source}: `python -m service {shlex.join(argv)}` does not parse: "
                        f"{capsys.readouterr().err.strip()}")


def test_each_make_command_names_a_target() -> None:
    targets = makefile_targets()
    # `make X` in inline code, and lines of shell blocks that start with make
    documented = {(doc.relative_to(ROOT).as_posix(), target)
                  for doc in DOCUMENTS
                  for text in (doc.read_text(), shell_blocks(doc.read_text()))
                  for target in re.findall(r"(?:`|^)make ([a-z][\w-]*)", text, flags=re.M)}
    assert {target for _, target in documented} >= {"run", "test", "env-dev", "models", "data"}
    missing = sorted((source, target) for source, target in documented if target not in targets)
    assert not missing, f"documented make targets the Makefile lacks: {missing}"
