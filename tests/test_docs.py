"""The docs cannot drift from the code.

- Every command line shown in SKILL.md, SETUP.md, README.md, references/ and docs/ that runs one of
  the scripts (`python scripts/X.py ...`, `{baseDir}/scripts/X.py ...`, `$ python scripts/X.py ...`
  in console transcripts; in code blocks, with backslash continuations, and in inline code) parses
  with that script's own parser. Parse only: nothing runs.
- references/cli.md and the planned commands in docs/ADVANCED_KEYFRAME_PLAN.md are what
  producer.commands.docgen makes from the parsers and the planner now.
- SKILL.md has valid frontmatter and stays under 500 lines.
- Every relative link in the docs points to a file that exists (and to a heading that exists there).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from producer.cli import CliError
from producer.commands import docgen

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("SKILL.md", "SETUP.md", "README.md", "references/prompt-engineering.md", "references/troubleshooting.md",
            "references/cli.md", "references/memory-and-speed.md", "docs/ADVANCED_KEYFRAME_PLAN.md",
            "docs/architecture.md")
DOCS = sorted({*(REPO / name for name in REQUIRED if (REPO / name).exists()), *(REPO / "references").glob("*.md"),
               *(REPO / "docs").glob("*.md")})
GENERATED = {REPO / "references" / "cli.md"}  # the parsers' own text: their examples name scripts bare
# Placeholders the docs use, and what stands in for them when a command is parsed.
PLACEHOLDERS = {"{baseDir}": ".", "{output_dir}": "my-film"}
SCRIPT = re.compile(r"(?:^|/)scripts/(\w+)\.py$")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
INLINE = re.compile(r"`(python3? +\S*\bscripts/\w+\.py\b[^`\n]*)`")  # a command in prose, not a file name
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")


# ---------------------------------------------------------------- reading the docs


def blocks(text: str) -> tuple[list[tuple[str, int, str]], str]:
    """([(language, first line number, body)] of the fenced code blocks, the prose with the blocks blanked)."""
    found, prose, current = [], [], None
    for n, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current = (fence.group(1), fence.group(2).lower(), n + 1, [])
            prose.append("")
        elif current is not None and line.strip().startswith(current[0]) and line.strip().strip(current[0][0]) == "":
            found.append((current[1], current[2], "\n".join(current[3])))
            current = None
            prose.append("")
        elif current is not None:
            current[3].append(line)
            prose.append("")
        else:
            prose.append(line)
    return found, "\n".join(prose)


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every script invocation shown in a markdown text."""
    found = []
    code, prose = blocks(text)
    for language, first, body in code:
        for n, line in _logical_lines(body, first):
            if language == "console":
                if not line.startswith("$ "):
                    continue  # a transcript's output, not a command
                line = line[2:]
            if "scripts/" in line:
                found.append((n, line))
    for n, line in enumerate(prose.splitlines(), 1):
        found += [(n, m.group(1)) for m in INLINE.finditer(line)]
    return found


def _logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """Lines with their backslash continuations joined."""
    out, pending, start = [], "", first
    for n, line in enumerate(body.splitlines(), first):
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """(script, argv) for each script run in a shell line (commands split at && ; | and comments dropped)."""
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens, commands = list(lexer), [[]]
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for command in commands:
        for i, token in enumerate(command):
            match = SCRIPT.search(token)
            if match:
                found.append((match.group(1) + ".py", command[i + 1:]))
                break
    return found


def parse(script: str, argv: list[str]) -> None:
    """Raise CliError (or SystemExit) when the script's parser refuses argv."""
    if "-h" in argv or "--help" in argv:
        docgen.script_parser(script)  # the script exists and builds its parser; --help itself would exit
        return
    docgen.script_parser(script).parse_args(argv)


def doc_commands() -> list[tuple[str, int, str, list[str]]]:
    out = []
    for doc in DOCS:
        if doc in GENERATED:
            continue
        for n, line in command_lines(doc.read_text(encoding="utf-8")):
            out += [(f"{doc.relative_to(REPO)}:{n}", n, script, argv) for script, argv in invocations(line)]
    return out


COMMANDS = doc_commands()


# ---------------------------------------------------------------- commands


def test_the_skills_pages_exist():
    assert [name for name in REQUIRED if not (REPO / name).is_file()] == []


@pytest.mark.parametrize("where,line,script,argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_in_the_docs_parses(where, line, script, argv):
    try:
        parse(script, argv)
    except (CliError, SystemExit) as err:
        message = err.message if isinstance(err, CliError) else f"exit {err.code}"
        pytest.fail(f"{where}: `{script} {shlex.join(argv)}` does not parse: {message}")


def test_the_docs_show_commands_where_expected():
    """The extraction itself works: each main page shows several commands, in every form the docs use."""
    per_file = {}
    for where, *_ in COMMANDS:
        per_file[where.split(":")[0]] = per_file.get(where.split(":")[0], 0) + 1
    for page, least in (("SKILL.md", 10), ("SETUP.md", 5), ("README.md", 5), ("references/troubleshooting.md", 10),
                        ("docs/ADVANCED_KEYFRAME_PLAN.md", 15), ("docs/setup-output-example.md", 8)):
        assert per_file.get(page, 0) >= least, f"{page}: only {per_file.get(page, 0)} commands found"
    scripts = {script for _, _, script, _ in COMMANDS}
    assert scripts >= {f"{s}" for s in docgen.SCRIPTS}


def test_the_extraction_catches_a_bad_command():
    text = ("Run it:\n\n```bash\npython {baseDir}/scripts/wan_video.py --start-frame a.png \\\n"
            "    --no-such-option 3 -o b.mp4   # a comment\n```\n\n"
            "```console\n$ python scripts/production.py check x && python scripts/production.py frobnicate x\n"
            "Next: python scripts/setup_diffusers.py --not-a-flag\n```\n"
            "and `python scripts/qwen_image.py --preset 9000p` inline.\n")
    found = [(s, argv) for _, line in command_lines(text) for s, argv in invocations(line)]
    assert found == [("wan_video.py", ["--start-frame", "a.png", "--no-such-option", "3", "-o", "b.mp4"]),
                     ("production.py", ["check", "x"]), ("production.py", ["frobnicate", "x"]),
                     ("qwen_image.py", ["--preset", "9000p"])]
    refused = 0
    for script, argv in found:
        try:
            parse(script, argv)
        except CliError:
            refused += 1
    assert refused == 3


# ---------------------------------------------------------------- generated pages


def test_cli_reference_matches_the_parsers():
    page = docgen.CLI_DOC.read_text(encoding="utf-8") if docgen.CLI_DOC.exists() else ""
    assert page == docgen.cli_reference(), f"references/cli.md is out of date: run `{docgen.REGENERATE}`"


def test_cli_reference_names_every_option():
    page = docgen.CLI_DOC.read_text(encoding="utf-8")
    for script in docgen.SCRIPTS:
        parser = docgen.script_parser(script)
        parsers = [parser] + list(getattr(docgen._subparsers(parser), "choices", {}).values())
        for p in parsers:
            for action in filter(docgen.shown, p._actions):
                for option in action.option_strings:
                    assert f"`{option}`" in page, f"{script}: {option} missing from references/cli.md"


def test_planned_commands_match_the_planner():
    page = docgen.KEYFRAME_DOC.read_text(encoding="utf-8")
    assert page == docgen.with_planned_commands(page), \
        f"docs/ADVANCED_KEYFRAME_PLAN.md's planned commands are out of date: run `{docgen.REGENERATE}`"


def test_docgen_check_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    keyframe_doc = tmp_path / "plan.md"
    keyframe_doc.write_text(docgen.with_planned_commands(docgen.KEYFRAME_DOC.read_text(encoding="utf-8")))
    monkeypatch.setattr(docgen, "CLI_DOC", tmp_path / "cli.md")
    monkeypatch.setattr(docgen, "KEYFRAME_DOC", keyframe_doc)
    monkeypatch.setattr(docgen, "REPO", tmp_path)
    (tmp_path / "cli.md").write_text("old\n")
    assert docgen.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert docgen.main([]) == 0 and docgen.main(["--check"]) == 0
    assert (tmp_path / "cli.md").read_text() == docgen.cli_reference()


# ---------------------------------------------------------------- SKILL.md


def frontmatter(text: str) -> dict[str, str]:
    """The `key: value` lines between the opening and closing `---` (single-line plain YAML scalars)."""
    lines = text.splitlines()
    assert lines[0] == "---", "SKILL.md must start with '---'"
    end = lines.index("---", 1)
    fields = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(": ")
        assert sep and re.fullmatch(r"[a-z][a-z-]*", key), f"not a 'key: value' line: {line!r}"
        value = value.strip()
        # a plain YAML scalar: nothing that YAML would read as structure
        assert value and value[0] not in "[]{}>|*&!%@`'\"#,?:-", f"{key}: value starts with {value[0]!r}"
        assert ": " not in value and " #" not in value, f"{key}: ': ' or ' #' would break the YAML"
        fields[key] = value
    return fields


def test_skill_frontmatter_is_valid():
    fields = frontmatter((REPO / "SKILL.md").read_text(encoding="utf-8"))
    assert set(fields) <= {"name", "description", "allowed-tools", "license", "metadata"}
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", fields["name"]) and len(fields["name"]) <= 64
    assert 0 < len(fields["description"]) <= 1024
    assert "Use when" in fields["description"], "the description must say when to use the skill"
    assert "<" not in fields["description"] and ">" not in fields["description"]


def test_frontmatter_check_can_fail():
    with pytest.raises(AssertionError):
        frontmatter("---\nname: x\ndescription: a: b\n---\n")


def test_skill_is_under_500_lines():
    assert len((REPO / "SKILL.md").read_text(encoding="utf-8").splitlines()) < 500


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower()).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = blocks(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


def broken_links(doc: Path) -> list[str]:
    _, prose = blocks(doc.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    broken = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_point_to_files(doc):
    assert broken_links(doc) == []


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Real heading\n")
    page.write_text("[ok](b.md) [ok](b.md#real-heading) [web](https://example.com) `[x](nowhere.md)`\n"
                    "[gone](missing.md) [bad anchor](b.md#nope)\n")
    assert broken_links(page) == ["missing.md (no such file)", "b.md#nope (no such heading)"]
