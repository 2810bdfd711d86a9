"""LoRAs for Wan 2.2 (two experts) and Qwen-Image-Edit, loaded exactly or not at all.

Users of these models fight "lora key not loaded" and loaders that apply part of a LoRA without a
word. This module loads every LoRA with diffusers' own mechanism (`load_lora_weights`, then
`set_adapters` with a strength per expert), then checks what actually got loaded and says so:
per LoRA and per expert, how many LoRA modules (A/B pairs) and weight deltas were applied, and
which keys were skipped and why. A LoRA that applies to nothing is always an error; one that
applies to only part of what it holds is an error unless `allow_partial=True`.

Command-line syntax (`parse_lora_spec`): Wan `FILE[:STRENGTH[:high|low|both]]` (default: both
experts), Qwen `FILE[:STRENGTH]`. Only `.safetensors` files are read: pickles (`.pt`, `.pth`,
`.ckpt`, `.bin`) can run code when loaded.

What diffusers 0.42.1 does with each kind of key, and what we do instead
------------------------------------------------------------------------
`lora_down`/`lora_up` (or `lora_A`/`lora_B`) + `alpha`:
    converted by `_convert_non_diffusers_wan_lora_to_diffusers` / `_convert_non_diffusers_qwen_lora_to_diffusers`,
    alpha/rank folded into the A and B matrices. We let diffusers convert and load them, then
    verify each module with a probe vector: loaded B·A·x must equal (alpha/rank)·up·down·x.
attention/FFN `.diff_b` (bias deltas):
    diffusers turns them into peft `lora_B.bias` (`lora_bias=True`). We add them to the bias
    directly instead (bias += strength * delta), like every other delta below.
norm `.diff` / `.diff_b`:
    diffusers drops them silently ("just zeroed values", a debug log). They are not always zero.
`.diff_m` (the per-block `modulation` tensor, diffusers' `blocks.N.scale_shift_table`; some extractors
spell it `blocks.N.modulation.diff`, read as the same delta), other `.diff`:
    diffusers drops them with an info log nobody sees.
Our rule: apply them or report them, never drop them silently. A non-zero delta is added to its
parameter (weight += strength * delta; names mapped with diffusers' own single-file Wan renames);
an all-zero one is reported as "all zeros (no effect)". A delta cannot be added to a GGUF-quantized
tensor: a weight delta of a linear layer then rides along as a LoRA pair with an identity factor
(rank min(out, in), e.g. 64 for Wan's head.head.diff; diffusers' converter does the same for that
key); anything else on a quantized tensor is reported as lost ("cannot add a delta to quantized
weights"), which makes the LoRA partial. (In published GGUF files biases, norms and modulation tables
stay F32 and the head F16, plain tensors: their deltas, head.head.diff included, are added directly.)
Wan 2.1 I2V image-encoder keys (`k_img`, `v_img`, `norm_k_img`, `img_emb`) have no target in
Wan 2.2, which has no image encoder: they are reported as not applicable, not as lost.

Malformed tensors are refused before anything is loaded, naming the file and the key: an alpha that is
not one number, integer or boolean weights, scalar pairs or deltas, NaN or infinite values (a NaN delta
added to a weight would give black frames).

Deltas are added to the weights at load time with that expert's strength, so a later strength
change needs a reload (`unload_loras` restores the original parameters exactly).

Strength and alpha
------------------
A LoRA file stores A (rank x in), B (out x rank) and usually `alpha`; the change to a weight is
strength * (alpha / rank) * B·A. Loaders that honour the stored alpha (diffusers, ComfyUI, this
module) use strength 1.0 for the published distill LoRAs: the alpha is already in the scale. Some
UIs ignore alpha and scale by the strength alone; there the same LoRA needs strength = alpha/rank
(e.g. 0.125 = 8/64 for an alpha-8, rank-64 file). A file without alpha means alpha = rank
(scale 1). Using 0.125 here as well would apply the LoRA at 1/64 of its trained size; we warn
when a strength equals the file's alpha/rank. The report lists rank, alpha and alpha/rank.

Step-distill LoRAs (`registry_lora_specs`): `wan-lightning` puts its high-noise file into
`transformer` and its low-noise file into `transformer_2`; `wan21-lightx2v` puts its one file into
both experts; `qwen-lightning` (4 or 8 steps) and `qwen-anypose` go into the Qwen transformer.

Traps in diffusers 0.42.1 this module steps around (see the tests):
- `WanLoraLoaderMixin.fuse_lora()` fuses only `components=["transformer"]` by default; a following
  `unload_lora_weights()` then throws the low-noise expert's LoRA away. We fuse each expert ourselves.
- keys without a target module load with only a logged warning ("unexpected keys"): partial, quietly.
- Qwen LoRA keys in diffusers naming without the `transformer.` prefix are filtered out by
  `load_lora_adapter(prefix="transformer")`: nothing loads, one warning. We add the prefix.
- diffusers-named Wan keys with `.alpha` are refused by `load_lora_weights` ("Invalid LoRA checkpoint");
  we fold alpha into lora_A first.

The module's parts: lora_files (reading files, key formats and names), lora_plan (what goes where,
refusals before loading), lora_report (the report), lora_fold (LoRAs folded into GGUF weights), lora_refold
(the same fold again, without peft, for an expert read again), lora_store (folds kept between runs); this module
has the syntax and the loading.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator

# Public names of this module that live in its parts: the skip reasons a report gives, the scripts' flag.
from producer.engines.loras.lora_files import (  # noqa: E402,F401
    EXPERT_ROLES,
    FAMILIES,
    MAX_ABS_STRENGTH,
    MODEL_TITLES,
    NOT_APPLICABLE,
    QUANTIZED,
    WAN_TARGET_NAMES,
    WAN_TARGETS,
    ZERO_DELTA,
    LoraFile,
    LoraModule,
    LoraSpec,
    check_lora_file,
    read_lora,
    wan_dotted,
)
from producer.engines.loras.lora_fold import adapter_components, fold_quantized, mark, unfold_all
from producer.engines.loras.lora_plan import (
    ALLOW_PARTIAL_HINT,  # noqa: E402,F401
    ExpertPlan,
    SpecPlan,
    is_quantized_model,
    plan_spec,
    refuse_incomplete,
    submodule,
)
from producer.engines.loras.lora_report import LoraReport, file_report, log_lora, warn_alpha_given_as_strength
from producer.errors import CliError, ExitCode

log = logging.getLogger("producer")

FOLD_GGUF = True  # the benchmark turns it off to measure peft's unfused adapters on GGUF weights


# ---------------------------------------------------------------- the command-line syntax


def parse_lora_spec(text: str, family: str, must_exist: bool = True) -> LoraSpec:
    """`FILE[:STRENGTH[:high|low|both]]` (Wan) or `FILE[:STRENGTH]` (Qwen) -> LoraSpec.

    Peeled from the right, so Windows paths (`C:\\loras\\x.safetensors:0.8`) keep their drive letter.
    Errors are CliErrors that show the syntax.
    """
    _check_family(family)
    syntax = "FILE[:STRENGTH[:high|low|both]]" if family == "wan" else "FILE[:STRENGTH]"
    rest, target = _peel_target(text.strip())
    rest, strength = _peel_strength(rest, text, syntax)
    if not rest:
        raise CliError(f"--lora {text!r} names no file", fix=f"use {syntax}, e.g. my_lora.safetensors:0.8")
    if target and family != "wan":
        raise CliError(f"--lora {text!r}: {MODEL_TITLES[family]} has one transformer, there is no {target!r} expert",
                       fix=f"drop ':{target}' ({syntax})")
    components = WAN_TARGETS[target or "both"] if family == "wan" else ("transformer",)
    try:
        path = Path(rest).expanduser()
    except RuntimeError:  # ~name of a user this system does not know
        raise CliError(f"--lora {text!r}: cannot expand {rest.split('/')[0]!r} to a home folder",
                       fix="give the LoRA's full path") from None
    check_lora_file(path, must_exist=must_exist)
    return LoraSpec(path=path, strength=strength, components=components)


def _peel_target(text: str) -> tuple[str, str | None]:
    head, sep, tail = text.rpartition(":")
    if sep and tail.strip().lower() in WAN_TARGETS:
        return head, tail.strip().lower()
    return text, None


def _peel_strength(text: str, original: str, syntax: str) -> tuple[str, float]:
    head, sep, tail = text.rpartition(":")
    if not sep or _looks_like_path_part(tail):
        return text, 1.0
    try:
        strength = float(tail)
    except ValueError:
        what = "neither a strength nor an expert (high, low, both)" if tail.isalpha() else "not a number"
        raise CliError(f"--lora {original!r}: {tail!r} is {what}",
                       fix=f"use {syntax}, e.g. {_example(syntax)}") from None
    if not math.isfinite(strength) or abs(strength) > MAX_ABS_STRENGTH:
        raise CliError(f"--lora {original!r}: strength {tail} is outside -{MAX_ABS_STRENGTH:g}..{MAX_ABS_STRENGTH:g}",
                       fix="typical strengths are 0.5-1.5 (distill LoRAs: 1.0)")
    return head, strength


def _example(syntax: str) -> str:
    """An example of `syntax`: an expert only where the model has two (Qwen refuses ':high')."""
    return "my_lora.safetensors:0.8" + (":high" if "high" in syntax else "")


def _looks_like_path_part(tail: str) -> bool:
    """`C:` + `\\x.safetensors`: the part after a drive letter's colon is a path, not a strength."""
    return tail.startswith(("\\", "/")) or tail.lower().endswith(".safetensors")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")


# ---------------------------------------------------------------- the registry's LoRAs


def registry_lora_specs(name: str, steps: int | None = None,
                        strength: float | dict[str, float] | None = None) -> list[LoraSpec]:
    """Specs for a registry LoRA entry, found in the Hugging Face cache (never downloaded).

    wan-lightning: high file -> transformer, low file -> transformer_2. wan21-lightx2v: one file into
    both experts (a dict strength such as {"transformer": 3.0, "transformer_2": 1.5} gives one spec per
    expert). qwen-lightning: `steps` 4 (default) or 8. qwen-anypose: base + helper files.
    A missing file is a CliError (exit 3) that names the setup command.
    """
    from producer.facts import registry
    from producer.modelfiles import models

    entry = registry.get(name)
    if entry.kind != "lora":
        raise ValueError(f"{name} is a {entry.kind}, not a LoRA")
    default = entry.strength
    if set(entry.roles) <= set(EXPERT_ROLES):  # Wan: the roles are the experts
        roles = _wan_roles(entry.roles)
    elif name == "qwen-lightning":  # the roles are step counts: one of them
        role = str(steps or 4)
        if role not in entry.roles:
            raise CliError(f"qwen-lightning has {'- and '.join(sorted(entry.roles))}-step LoRAs, not {steps}",
                           fix="use 4 or 8 steps")
        roles = {role: tuple(entry.targets)}
    else:  # every file (qwen-anypose: base + helper) into the entry's targets
        roles = {role: tuple(entry.targets) for role in entry.roles}
    specs = []
    for role, components in roles.items():
        path = models.locate_file(entry, role)
        label = name if len(roles) == 1 else f"{name}:{WAN_TARGET_NAMES.get(role, role)}"
        specs.extend(_specs_with_strength(path, components, strength, default, label))
    return specs


def _wan_roles(roles: dict) -> dict[str, tuple[str, ...]]:
    """Group the components that share one file (wan21-lightx2v names the same file for both)."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for component, filename in roles.items():
        by_file[filename].append(component)
    return {components[0]: tuple(components) for components in by_file.values()}


def _specs_with_strength(path: Path, components: tuple[str, ...], strength, default: float,
                         label: str) -> list[LoraSpec]:
    if not isinstance(strength, dict):
        value = default if strength is None else float(strength)
        return [LoraSpec(path, value, components, label)]
    values = {c: float(strength.get(c, default)) for c in components}
    if len(set(values.values())) == 1:
        return [LoraSpec(path, next(iter(values.values())), components, label)]
    return [LoraSpec(path, values[c], (c,), f"{label}:{WAN_TARGET_NAMES.get(c, c)}") for c in components]


def load_loras(pipe, specs, family: str, allow_partial: bool = False, fuse: bool = False,
               refoldable: bool = False) -> LoraReport:
    """Load each LoRA into its transformer(s), verify what got loaded, set per-expert strengths.

    Everything is checked before the pipeline is touched; a failure after that rolls back what was
    loaded. `fuse=True` merges the LoRAs into the weights (no per-step cost, for good); on GGUF weights it
    folds them into the weight each layer dequantizes (a small cost per step, and reversible). Otherwise they
    stay peft adapters. Call once per pipeline with all LoRAs; `unload_loras` undoes a load that was not
    fused. `refoldable`: the caller will read the same GGUF transformer again (one Wan expert in RAM), so the
    report keeps how to fold these LoRAs again without peft (`report._refolds`, lora_refold). A fused load
    whose folds were all captured is kept for later runs, which fold the same files into the same model from
    it without peft (lora_store; PRODUCER_LORA_STORE=0 turns that off).
    """
    _check_family(family)
    specs = list(specs)
    report = LoraReport(family)
    if not specs:
        return report
    _refuse_existing_adapters(pipe)
    kept = None
    if fuse and FOLD_GGUF:  # the store holds folds only; torch: not at import (the scripts' --help)
        from producer.engines.loras import lora_store

        kept = lora_store.Entry.for_load(pipe, specs, family, allow_partial)
    if kept is not None and (recalled := kept.recall(pipe)) is not None:
        return recalled  # folded without peft, as the whole way folded the same files into the same model before
    files: dict[Path, LoraFile] = {}
    for spec in specs:
        if spec.path not in files:
            files[spec.path] = read_lora(spec.path, family)
    plans = [plan_spec(pipe, spec, files[spec.path], family, i) for i, spec in enumerate(specs)]
    for plan in plans:
        refuse_incomplete(plan, family, allow_partial)
    try:
        for plan in plans:
            _load_plan(pipe, plan, report)
            refuse_incomplete(plan, family, allow_partial)  # again: now from what actually loaded
        _activate(pipe, plans)
        if fuse:  # not for a batch that swaps LoRA sets: its transformer is offloaded by then (lora_fold)
            from producer.engines.loras import lora_refold  # torch: not at import (the scripts' --help)

            scales = {c: lora_refold.peft_scales(getattr(pipe, c)) for c in adapter_components(plans)} \
                if refoldable or kept is not None else {}
            fold_quantized(pipe, plans, report, enabled=FOLD_GGUF)
            report._refolds = {c: lora_refold.capture(plans, c, family, scales[c]) for c in report._folded
                               if c in scales}
            _fuse(pipe, plans)
    except BaseException:
        _rollback(pipe, report)
        raise
    report.loras = [file_report(plan, family) for plan in plans]
    for plan, lora in zip(plans, report.loras):
        log_lora(lora)
        warn_alpha_given_as_strength(plan)
    if kept is not None:
        kept.keep(report)
    return report


def unload_loras(pipe, report: LoraReport) -> None:
    """Remove the adapters `load_loras` added and restore the parameters its deltas changed, exactly."""
    if report.fused:
        raise CliError("LoRAs fused into the weights cannot be taken out again",
                       fix="reload the model to change LoRAs (or load them unfused)", code=ExitCode.FAILED)
    _rollback(pipe, report)


def _refuse_existing_adapters(pipe) -> None:
    present = _present_adapters(pipe)
    if present:
        raise RuntimeError(f"the pipeline already has LoRA adapters {sorted(present)}: call unload_loras first "
                           "(set_adapters would otherwise switch them off)")


def _present_adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


# ---------------------------------------------------------------- loading, then checking what got loaded


def _load_plan(pipe, plan: SpecPlan, report: LoraReport) -> None:
    state_dicts: dict[frozenset, dict] = {}  # both experts usually take the same modules: convert once
    for expert in plan.experts:
        if expert.modules:
            wanted = frozenset(m.source for m in expert.modules)
            if wanted not in state_dicts:
                state_dicts[wanted] = _adapter_state_dict(pipe, plan, expert.modules)
            _load_adapter(pipe, expert.component, state_dicts[wanted], plan.adapter_name, report)
            _keep_verified(expert, plan)
        expert.add_deltas(plan.lora.tensors, report._originals)


def _adapter_state_dict(pipe, plan: SpecPlan, modules: list[LoraModule]) -> dict:
    """The pairs in the naming diffusers' converter expects, alpha/rank folded into lora_down, converted
    by diffusers (`lora_state_dict`), then checked against the modules we predicted."""
    lora = plan.lora
    canonical = {}
    for module in modules:
        down, up = lora.tensors[module.keys["down"]], lora.tensors[module.keys["up"]]
        scale = module.scale(lora.tensors)
        # Folding alpha ourselves: diffusers' Wan converter ignores alpha outside the blocks (head, embeddings)
        # and refuses diffusers-named keys with alpha. scale * (B @ A) == B @ (scale * A).
        down = down if scale == 1.0 else (down.float() * scale).to(down.dtype)
        canonical[_canonical_key(lora.style, module, "down")] = down
        canonical[_canonical_key(lora.style, module, "up")] = up
    try:
        converted = type(pipe).lora_state_dict(canonical)
    except (ValueError, KeyError, IndexError) as exc:
        raise CliError(f"diffusers could not convert {plan.spec.name}: {type(exc).__name__}: {exc}",
                       fix="report this LoRA's key names (python -c \"from safetensors import safe_open; "
                           "print(list(safe_open('FILE','pt').keys())[:20])\")", code=ExitCode.FAILED) from None
    # Qwen keys in diffusers naming come back without the prefix that load_lora_adapter filters on.
    converted = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in converted.items()}
    _check_conversion(plan, modules, converted)
    return converted


def _canonical_key(style: str, module: LoraModule, role: str) -> str:
    if style == "wan-diffusers":
        return f"transformer.{module.source}.{'lora_A' if role == 'down' else 'lora_B'}.weight"
    suffix = "lora_down.weight" if role == "down" else "lora_up.weight"
    if style == "qwen-musubi":
        return f"{module.source}.{suffix}"  # lora_unet_..., converted by diffusers' Qwen converter
    return f"diffusion_model.{wan_dotted(module.source, style)}.{suffix}"


def _check_conversion(plan: SpecPlan, modules: list[LoraModule], converted: dict) -> None:
    got = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted}
    expected = {m.target for m in modules}
    if got != expected:
        raise CliError(f"diffusers converted {plan.spec.name} to other module names than expected: "
                       f"unexpected {sorted(got - expected)[:3]}, missing {sorted(expected - got)[:3]}",
                       fix="report this with the LoRA's name; loading it would apply it only in part",
                       code=ExitCode.FAILED)


def _load_adapter(pipe, component: str, state_dict: dict, adapter_name: str, report: LoraReport) -> None:
    kwargs = {"load_into_transformer_2": True} if component == "transformer_2" else {}
    if adapter_name not in report._adapters:
        report._adapters.append(adapter_name)
    with _library_warnings_to_log():
        pipe.load_lora_weights(dict(state_dict), adapter_name=adapter_name, **kwargs)


def _keep_verified(expert: ExpertPlan, plan: SpecPlan) -> None:
    """Count as applied only the modules whose loaded adapter reproduces the file's (alpha/rank)·B·A."""
    verified = []
    for module in expert.modules:
        problem = _loaded_problem(expert.model, plan.adapter_name, module, plan.lora.tensors)
        if problem:
            expert.skipped[(problem, True)].extend(module.key_list())
        else:
            verified.append(module)
    expert.modules = verified


def _loaded_problem(model, adapter: str, module: LoraModule, tensors: dict) -> str | None:
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = submodule(model, module.target)
    if not isinstance(layer, BaseTunerLayer) or adapter not in getattr(layer, "lora_A", {}):
        return "not loaded by diffusers"
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if a.device.type == "meta":
        return "loaded onto the meta device (offloading was active): cannot be checked"
    # A random probe: B·A·x against the file's (alpha/rank)·up·down·x, cheap even at rank 64 x 5120.
    x = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(0))
    loaded = b.detach().float().cpu() @ (a.detach().float().cpu() @ x) * layer.scaling[adapter]
    down, up = tensors[module.keys["down"]].float(), tensors[module.keys["up"]].float()
    expected = up @ (down @ x) * module.scale(tensors)
    tolerance = 1e-2 * float(expected.norm()) + 1e-6  # bf16 storage rounds; a wrong load is off by ~100 %
    return None if float((loaded - expected).norm()) <= tolerance else "loaded with other values than the file's"


def _activate(pipe, plans: list[SpecPlan]) -> None:
    """One set_adapters call with every adapter and a strength per expert, then check the scales took."""
    names, weights = [], []
    for plan in plans:
        if plan.has_modules:
            names.append(plan.adapter_name)
            weights.append({e.component: e.strength for e in plan.experts if e.modules})
    if not names:
        return
    with _library_warnings_to_log():
        pipe.set_adapters(names, adapter_weights=weights)
    for plan in plans:
        for expert in plan.experts:
            _check_scales(plan, expert)


def _check_scales(plan: SpecPlan, expert: ExpertPlan) -> None:
    for module in expert.modules:
        layer = submodule(expert.model, module.target)
        name = plan.adapter_name
        wanted = expert.strength * layer.lora_alpha[name] / layer.r[name]
        if name not in layer.active_adapters or not math.isclose(layer.scaling[name], wanted, rel_tol=1e-6,
                                                                  abs_tol=1e-12):
            raise CliError(f"{plan.spec.name}: the {expert.component} layer {module.target} runs at scale "
                           f"{layer.scaling[name]} with adapters {layer.active_adapters}, expected {wanted} with "
                           f"{name}", fix="report this (diffusers set_adapters)", code=ExitCode.FAILED)


def _fuse(pipe, plans: list[SpecPlan]) -> None:
    """Merge each expert's adapters into its weights and drop the LoRA layers (what GGUF weights did not
    fold: those cannot take a delta and keep their adapters).

    Per expert on purpose: WanLoraLoaderMixin.fuse_lora() fuses only `transformer` unless told otherwise.
    """
    for component, names in adapter_components(plans).items():
        model = getattr(pipe, component)
        if is_quantized_model(model):
            continue
        with _library_warnings_to_log():
            model.fuse_lora(adapter_names=names)
            model.unload_lora()
        mark(plans, component, "fused")


def _rollback(pipe, report: LoraReport) -> None:
    unfold_all(pipe, report)
    ours = [name for name in report._adapters if name in _present_adapters(pipe)]
    if ours:
        with _library_warnings_to_log():
            if set(ours) == _present_adapters(pipe):
                pipe.unload_lora_weights()
            else:
                pipe.delete_adapters(ours)
    import torch

    with torch.no_grad():
        for param, original in reversed(report._originals):
            param.copy_(original)
    report._originals.clear()
    report._adapters.clear()


# Warnings peft raises on normal use (a second adapter in one model); anything else is passed on.
EXPECTED_LIBRARY_WARNINGS = ("Already found a `peft_config` attribute in the model",)


@contextlib.contextmanager
def _library_warnings_to_log() -> Iterator[None]:
    """Route Python warnings raised while loading to our logger, at debug level for the known harmless ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        text = str(warning.message)
        level = logging.DEBUG if text.startswith(EXPECTED_LIBRARY_WARNINGS) else logging.WARNING
        log.log(level, f"{warning.category.__name__}: {text}")


