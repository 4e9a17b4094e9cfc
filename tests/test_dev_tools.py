"""The developer's tools say the same thing: the pre-commit hooks run make lint's checks, and
make help lists every target a newcomer is told about."""

from __future__ import annotations

import re
import shlex
import subprocess

import yaml

from native.settings import ROOT

VENV_BIN = ".venv/bin/"


def lint_commands() -> list[str]:
    """The commands of make lint's recipe, as written in the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no lint target in the Makefile"
    return [line.strip() for line in recipe.group(1).splitlines()]


def hook_commands() -> list[str]:
    """The pre-commit hooks' commands, as make would run them: on the venv's PATH."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    commands = []
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            words = shlex.split(hook["entry"])
            if words[:2] == ["bash", "-c"]:
                words = shlex.split(words[2])
            command = " ".join(words)
            commands.append(command.replace(VENV_BIN, ""))
    return commands


def test_pre_commit_runs_what_make_lint_runs():
    assert hook_commands() == lint_commands()


def test_every_pre_commit_hook_runs_on_the_whole_tree():
    """As make lint does: a hook given only the changed files would miss what they break."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert hooks
    assert all(repo["repo"] == "local" for repo in config["repos"])  # offline, pinned versions
    assert all(hook["pass_filenames"] is False for hook in hooks)


def test_the_pre_commit_config_is_valid():
    run = subprocess.run(
        [str(ROOT / VENV_BIN / "pre-commit"), "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_make_help_lists_every_documented_target():
    out = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = re.findall(r"^  make (\S+)", out, re.M)
    documented = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert listed == documented
    assert {"run", "test", "test-fast", "lint", "help"} <= set(listed)


def test_help_is_what_a_bare_make_does():
    """A bare `make` explains; it does not start the stack or install anything."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "awk" in out and "native.run" not in out and "pip" not in out
