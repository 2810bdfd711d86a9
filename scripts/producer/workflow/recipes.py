"""Is an output stale? Its recorded recipe against the recipe its job would record if run now.

The would-be recipe comes from the script's own resolver (qwen_jobs.resolve, wan_jobs.resolve_request
and resolve_load, without loading a model), so `status` calls stale exactly what the script's
--batch would not skip: a new prompt, seed, size, step count, style text, LoRA, or an input file whose
content changed. The model is compared apart: every (repo, commit) the recipe names is looked up in
the installed Hugging Face cache; a different installed commit is a new model revision (a model not
installed here cannot be checked, and says so). The weight form (bf16, fp8, GGUF) follows the
machine's memory plan and is not compared.

The film's recipe (assemble_video.py) records its clips' contents and its transitions: it is stale
when a clip changed or a transition of the plan changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

from producer.errors import CliError
from producer.facts import registry
from producer.files import layout
from producer.files.provenance import file_digest, make_recipe, model_refs
from producer.values import log
from producer.workflow.planner import ASSEMBLE, QWEN, WAN, Job, Plan, parse_job


def would_be_recipe(job: Job, plan: Plan) -> dict:
    """The recipe the job's script would record now, with an empty model part (raises CliError)."""
    args = parse_job(plan, job)
    with _quiet():
        if job.script == QWEN:
            from producer.engines.qwen import qwen_jobs

            resolved = qwen_jobs.resolve(args)
            return make_recipe(QWEN, resolved.settings, resolved.inputs, {})
        if job.script == WAN:
            from producer.engines.wan import wan_jobs

            load = wan_jobs.resolve_load(args)
            request = wan_jobs.resolve_request(args, distilled=load.distill is not None)
            return wan_jobs.recipe_for(request, load, SimpleNamespace(provenance={}), args.fp8_matmul)
    raise ValueError(f"no resolver for {job.script}")


@contextlib.contextmanager
def _quiet():
    """The resolvers log their notes (Lightning not installed...) for a run; status is not a run."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def differences(recorded: dict, would: dict, root: Path) -> list[str]:
    """What changed, in words: settings first, then input files."""
    old, new = _plain(recorded.get("settings", {})), _plain(would.get("settings", {}))
    reasons = []
    if recorded.get("script") != would.get("script"):
        reasons.append(f"made by {recorded.get('script')}, now planned for {would.get('script')}")
    for key in sorted(set(old) | set(new), key=lambda k: (k != "prompt", k != "seed", k)):
        if old.get(key) != new.get(key):
            reasons.append(_setting_change(key, old.get(key), new.get(key)))
    reasons += _input_changes(recorded.get("inputs", {}), would.get("inputs", {}), root)
    return reasons


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _setting_change(key: str, old, new) -> str:
    if key in ("prompt", "negative_prompt"):
        return f"{key.replace('_', ' ')} changed"
    return f"{key} {_short(old)} -> {_short(new)}"


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _input_changes(old: dict, new: dict, root: Path) -> list[str]:
    reasons = []
    for role in sorted(set(old) | set(new)):
        before, after = _entries(old.get(role)), _entries(new.get(role))
        if [e.get("sha256") for e in before] == [e.get("sha256") for e in after]:
            continue
        paths = [e.get("path") for e in after] or [e.get("path") for e in before]
        names = ", ".join(_name(root, Path(p)) for p in paths if p)
        reasons.append(f"{role.replace('_', ' ')} changed ({names})" if names else f"{role.replace('_', ' ')} changed")
    return reasons


def _name(root: Path, path: Path) -> str:
    """Inside the production: its relative path; elsewhere (a LoRA in the model cache): its file name."""
    shown = layout.relative(root, path)
    return path.name if shown == str(path) else shown


def _entries(value) -> list[dict]:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict)]


def partial_differences(recorded: dict, job: Job) -> list[str]:
    """What can be compared without the script's resolver (when its models are not installed here): the
    seed and the contents of the input files (as a set: an input's role is the resolver's business)."""
    reasons = []
    seed = recorded.get("settings", {}).get("seed")
    if "seed" in job.options and seed != job.options["seed"]:
        reasons.append(f"seed {seed} -> {job.options['seed']}")
    made_from = {e.get("sha256") for role, value in recorded.get("inputs", {}).items() if role != "loras"
                 for e in _entries(value)}
    now = {file_digest(p) for p in job.inputs if p.is_file()}
    if made_from != now:
        reasons.append("input files changed")
    return reasons


# ---------------------------------------------------------------- the model


def model_changes(recorded: dict) -> tuple[list[str], list[str]]:
    """(reasons: installed commits that differ from the recorded ones, notes: recorded models not installed)."""
    from producer.modelfiles import models

    reasons, notes = [], []
    for repo, commit in model_refs(recorded.get("model", {})):
        entries = [e for e in registry.entries() if e.repo_id == repo]
        installed = {snap.name for e in entries if (snap := models.snapshot_dir(e)) is not None}
        if not installed:
            notes.append(f"{repo} is not installed here")
        elif commit not in installed:
            reasons.append(f"model {repo} is now at {min(installed)[:10]} (made with {str(commit)[:10]})")
    return reasons, notes


# ---------------------------------------------------------------- the film


def film_differences(recorded: dict, job: Job, transitions: list[str], root: Path) -> list[str]:
    """The film against its clips as they are now and the plan's transitions (assemble_video's recipe)."""
    reasons = []
    clips = _entries(recorded.get("inputs", {}).get("clips"))
    now = [Path(c) for c in job.options["clips"]]
    if len(clips) != len(now):
        return [f"made from {len(clips)} clips, the plan has {len(now)}"]
    for entry, path in zip(clips, now):
        if not path.is_file() or file_digest(path) != entry.get("sha256"):
            reasons.append(f"{layout.relative(root, path)} changed")
    made = [t.get("kind") for t in recorded.get("settings", {}).get("transitions", []) if isinstance(t, dict)]
    if made and made != transitions:
        reasons.append(f"transitions {', '.join(made)} -> {', '.join(transitions)}")
    return reasons


def check_resolvable(job: Job, plan: Plan) -> CliError | None:
    """A job whose inputs are all there but which its script would refuse (a bad picture, a bad option)."""
    if job.script == ASSEMBLE:
        return None
    try:
        would_be_recipe(job, plan)
    except CliError as err:
        return err
    return None
