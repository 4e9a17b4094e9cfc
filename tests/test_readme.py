"""The README's examples, run verbatim (only the port differs) against a real stack."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from native.settings import ROOT

pytestmark = pytest.mark.stack


def console_examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the README's ```console blocks."""
    readme = (ROOT / "README.md").read_text()
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", readme, re.S):
        for chunk in block.split("$ ")[1:]:
            command, _, output = chunk.partition("\n")
            pairs.append((command, output.strip()))
    return pairs


EXAMPLES = console_examples()


def test_the_readme_has_the_examples():
    commands = [c for c, _ in EXAMPLES]
    assert len(commands) == 3
    assert all(c.startswith("curl --cacert localhost.crt ") for c in commands)


@pytest.mark.parametrize(("command", "expected"), EXAMPLES)
def test_readme_example(stack, command, expected):
    argv = shlex.split(command.replace("localhost:5000", f"localhost:{stack.cfg.edge_port}"))
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads(expected)
