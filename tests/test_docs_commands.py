"""The commands the docs show are commands the shipped CLI takes.

A renamed parameter (``exclude_first`` -> ``skip_first``) once left the README's geometry block
showing a ``--set`` that the CLI refuses, because nothing reran that block after the rename. These
tests read every ``workbench ...`` command in the tracked markdown (fenced ``bash`` blocks and inline
code) and check it without running it: it parses with :func:`workbench.cli.build_parser`, a ``run``
names a real analysis, model and parameters (each value validated as ``run_analysis`` would), and a
data path names a file that exists. They also check that each results block in the README lists the
commands its table declares today (:func:`workbench.reproduce.render_block` writes those lines), so a
changed table without a regenerated block fails here instead of misleading a reader.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from workbench.cli import _parse_sets, build_parser
from workbench.paths import PROJECT_ROOT
from workbench.reproduce import README, all_tables

#: a token that stands for something the reader fills in (ANALYSIS, KEY, M) or an elision
_PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z][A-Z_]*|\[.*|.*\|.*)$")


def _markdown_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [name for name in listed if (PROJECT_ROOT / name).is_file()]


def _commands(text: str) -> list[str]:
    """``workbench ...`` commands of a markdown text: lines of fenced blocks (a trailing ``# comment``
    dropped) and inline code spans (which may wrap over lines)."""
    found = []
    fenced = re.compile(r"```[a-z]*\n(.*?)```", re.S)
    for block in fenced.findall(text):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("workbench "):
                found.append(line)
    for span in re.findall(r"`([^`]+)`", fenced.sub("", text)):
        span = " ".join(span.split())
        if span.startswith("workbench "):
            found.append(span)
    return found


def _checkable(command: str) -> bool:
    """Complete commands only: no placeholder tokens, and a ``run`` given with options (a bare
    ``workbench run tuned_lens`` in prose names the command rather than showing one to copy)."""
    argv = shlex.split(command)[1:]
    if any(_PLACEHOLDER.match(token) for token in argv):
        return False
    return not (argv[:1] == ["run"] and not any(token.startswith("--") for token in argv))


DOC_COMMANDS = sorted({(name, command) for name in _markdown_files()
                       for command in _commands((PROJECT_ROOT / name).read_text())})


def test_the_docs_show_commands_and_the_reader_finds_them():
    """The scan itself works: it finds the README's results commands and its CLI tour."""
    commands = [c for _, c in DOC_COMMANDS]
    assert sum(c.startswith("workbench run ") for c in commands) > 50
    assert any(c.startswith("workbench train-lens --model gemma3-270m") for c in commands)
    assert not _checkable("workbench run ANALYSIS --model M --data D")
    assert not _checkable("workbench run tuned_lens")
    assert _checkable("workbench run geometry --model smollm2-135m --data abstracts --out out/g")


@pytest.mark.parametrize("where,command", [d for d in DOC_COMMANDS if _checkable(d[1])],
                         ids=lambda value: value if len(value) < 60 else value[:57] + "...")
def test_every_documented_command_is_one_the_cli_takes(where, command, capsys):
    from workbench.data import BUILTIN_DATASETS
    from workbench.models.registry import builtin_models
    from workbench.params import validate_params
    from workbench.registry import get_analysis

    argv = shlex.split(command)[1:]
    try:
        args = build_parser(backends=True).parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{command}` is refused by the CLI: {capsys.readouterr().err.strip()}")
    if args.command != "run":
        return
    spec = get_analysis(args.analysis)
    validate_params(args.analysis, spec.all_params, _parse_sets(args.set))
    for model in [args.model] if isinstance(args.model, str) else (args.model or []):
        assert model in builtin_models(), f"{where}: `{command}` names a model that is not built in: {model}"
    data = getattr(args, "data", None)
    if data:
        base = re.sub(r"\[.*\]$", "", data)
        assert base in BUILTIN_DATASETS or (PROJECT_ROOT / base).is_file(), (
            f"{where}: `{command}` reads {data!r}, which is neither a built-in set nor a file of the project")


def test_each_readme_results_block_lists_the_commands_its_table_declares():
    text = README.read_text()
    for name, table in all_tables().items():
        match = re.search(rf"<!-- results:{re.escape(name)} -->(.*?)<!-- /results:{re.escape(name)} -->", text, re.S)
        assert match, f"README.md has no <!-- results:{name} --> block"
        shown = re.search(r"```bash\n(.*?)```", match.group(1), re.S).group(1).strip().splitlines()
        declared = [f"{command} --out results/{name}/{job}" for job, command in table.jobs.items()]
        assert shown == declared, (
            f"README block {name!r} shows other commands than its table declares; regenerate it with "
            f"`workbench reproduce {name} --update-readme`")
