"""The generated parts of the docs, so that they cannot drift from the code.

- references/cli.md: every option of every script, from the scripts' own parsers (`build()`): their
  groups, arguments, choices, defaults and help, with each description and epilog as written. Tables
  are built from the parsers' actions rather than from `--help` text, whose wrapping depends on the
  terminal and the Python version.
- docs/ADVANCED_KEYFRAME_PLAN.md, between `<!-- planned-commands -->` markers: the command lines the
  planner makes for the sample production (examples/lighthouse), as `production.py next` prints them
  for a copy in /tmp/lighthouse.

Regenerate after changing a parser, the planner or the sample (tests/test_docs.py fails until then):

    cd scripts && python -m producer.commands.docgen            # rewrite both
    cd scripts && python -m producer.commands.docgen --check    # exit 1 naming what is out of date
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPTS_DIR = REPO / "scripts"
CLI_DOC = REPO / "references" / "cli.md"
KEYFRAME_DOC = REPO / "docs" / "ADVANCED_KEYFRAME_PLAN.md"
SCRIPTS = ("production.py", "qwen_image.py", "wan_video.py", "assemble_video.py", "setup_diffusers.py",
           "validate_diffusers.py")
REGENERATE = "cd scripts && python -m producer.commands.docgen"
SAMPLE_ROOT = "/tmp/lighthouse"  # where the docs say the sample was copied (the README's demo folder)
BEGIN, END = "<!-- planned-commands -->", "<!-- /planned-commands -->"
PHASE_TITLES = {"assets": "Phase 2.5: assets", "keyframes": "Phase 3: keyframes", "clips": "Phase 4: clips",
                "film": "Phase 5: the film"}


def script_parser(script: str) -> argparse.ArgumentParser:
    """The parser a script builds for itself (every script has `build()`, in producer.makers or .commands)."""
    stem = Path(script).stem
    place = "makers" if stem in ("qwen_image", "wan_video", "assemble_video") else "commands"
    return importlib.import_module(f"producer.{place}.{stem}").build()


# ---------------------------------------------------------------- references/cli.md


def cli_reference() -> str:
    parts = [
        "# Command-line reference",
        "",
        f"Generated from the scripts' own parsers by `{REGENERATE}`; `tests/test_docs.py` fails when this page",
        "differs from them. Every script also prints this with `--help`. Run the scripts from any folder as",
        "`python scripts/NAME.py`.",
        "",
        "Contents: " + ", ".join(f"[{s}](#{s.replace('.', '')})" for s in SCRIPTS),
    ]
    for script in SCRIPTS:
        parts += ["", *_parser_section(script_parser(script), "##")]
    return "\n".join(parts).rstrip() + "\n"


def _parser_section(parser: argparse.ArgumentParser, level: str) -> list[str]:
    lines = [f"{level} {parser.prog}", ""]
    if parser.description:
        lines += _text_block(parser.description)
    lines += _argument_tables(parser, level + "#")
    sub = _subparsers(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            lines += _parser_section(child, level + "#")
    if parser.epilog:
        lines += _text_block(parser.epilog)
    return lines


def _text_block(text: str) -> list[str]:
    return ["```text", *[line.rstrip() for line in text.strip("\n").splitlines()], "```", ""]


def _subparsers(parser: argparse.ArgumentParser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _argument_tables(parser: argparse.ArgumentParser, level: str) -> list[str]:
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if shown(a)]
        if not actions:
            continue
        lines += [f"{level} {parser.prog}: {group.title}", "", "| argument | value | default | what it does |",
                  "|---|---|---|---|"]
        lines += [_row(parser, a) for a in actions]
        lines.append("")
    return lines


def shown(action: argparse.Action) -> bool:
    """Options `--help` lists: not -h itself, not the subcommands (they get sections), not hidden ones."""
    return not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) \
        and action.help != argparse.SUPPRESS


def _row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    return f"| {name} | {_cell(_value(action))} | {_cell(_default(action))} | {_cell(_help(parser, action))} |"


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "(flag)"
    if action.choices is not None:
        word = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.metavar
        word = metavar if isinstance(metavar, str) else (action.dest.upper() if action.option_strings else action.dest)
    return {"+": f"{word} [{word} ...]", "*": f"[{word} ...]", "?": f"[{word}]"}.get(action.nargs, word)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    return str(action.default)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": parser.prog, "default": action.default}
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ---------------------------------------------------------------- the sample's planned commands


def planned_commands() -> str:
    """Every job the planner makes for examples/lighthouse, in phase order, one command each."""
    from producer.commands.demo import SAMPLE
    from producer.production.project import load_production
    from producer.workflow.approvals import read_takes
    from producer.workflow.planner import job_argv, plan_production

    prod = load_production(SAMPLE)
    plan = plan_production(prod, read_takes(SAMPLE))
    lines = [BEGIN, f"<!-- generated by `{REGENERATE}` from examples/lighthouse; do not edit by hand -->"]
    for phase, title in PHASE_TITLES.items():
        jobs = [j for j in plan.jobs if j.phase == phase]
        lines += ["", f"#### {title}", "", "```bash"]
        for job in jobs:
            argv = [_shown(str(a), plan.root) for a in job_argv(job, plan)]
            lines += [f"# {job.id}: {job.label}" + (f" (after {', '.join(job.depends)})" if job.depends else ""),
                      *_wrapped(job.script, argv)]
        lines.append("```")
    return "\n".join(lines + [END])


def _shown(arg: str, root: Path) -> str:
    return arg.replace(str(root), SAMPLE_ROOT)


def _wrapped(script: str, argv: list[str]) -> list[str]:
    """`python scripts/X.py` then one option (with its values) per continuation line."""
    groups: list[list[str]] = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    head = f"python scripts/{script}"
    return [head + " \\"] + [f"    {shlex.join(g)}" + (" \\" if i < len(groups) - 1 else "")
                             for i, g in enumerate(groups)]


def with_planned_commands(page: str) -> str:
    """The page with its marked block replaced by the current planned commands."""
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + planned_commands() + page[end:]


# ---------------------------------------------------------------- the command


def outdated() -> list[tuple[Path, str]]:
    """(file, what it should contain) for every generated doc that differs from the code."""
    wanted = [(CLI_DOC, cli_reference()), (KEYFRAME_DOC, with_planned_commands(KEYFRAME_DOC.read_text("utf-8")))]
    return [(path, text) for path, text in wanted
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer.commands.docgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report the files that are out of date")
    args = parser.parse_args(argv)
    stale = outdated()
    for path, text in stale:
        if args.check:
            print(f"out of date: {path.relative_to(REPO)} (run: {REGENERATE})", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)
    if not stale:
        print("generated docs are up to date", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
