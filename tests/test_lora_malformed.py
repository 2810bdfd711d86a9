"""Malformed LoRA tensors beyond tests/test_lora.py's table: in both model families, in every tensor role
of a real published layout, tensors of the wrong rank, rank-0 pairs, fp8 and complex values. Each is refused
before anything loads, naming the file and the key; nothing is changed in the model; never "applies to
nothing"."""

import re

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from producer.cli import CliError, ExitCode
from producer.engines.loras import lora as L
from producer.testing import standin_loras as SL


def has_lora_layers(model) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def first_key(sd: dict, ending: str) -> str:
    return next(k for k in sorted(sd) if k.endswith(ending))


def malformed(tensor: torch.Tensor, how: str) -> torch.Tensor:
    return {
        "nan": lambda: torch.full_like(tensor, float("nan")),
        "inf": lambda: torch.full_like(tensor, float("-inf")),
        "one-nan": lambda: torch.where(torch.arange(tensor.numel()).reshape(tensor.shape) == 0, float("nan"), tensor),
        "int": lambda: torch.ones_like(tensor, dtype=torch.int64),
        "bool": lambda: torch.ones_like(tensor, dtype=torch.bool),
        "complex": lambda: tensor.to(torch.complex64),
        "scalar": lambda: torch.tensor(0.5),
        "vector": lambda: tensor.flatten(),
        "several": lambda: tensor.reshape(-1).repeat(2),
        "3d": lambda: tensor.unsqueeze(0),
    }[how]()


SAYS = {
    "nan": "NaN",
    "inf": "infinite",
    "one-nan": "NaN",
    "int": "torch.int64",
    "bool": "torch.bool",
    "complex": "complex64",
    "scalar": "scalar",
    "vector": "1 dimension",
    "several": "2 elements",
    "3d": "3 dimensions",
}

# (family, builder, key ending, malformations): the roles of a real layout, each spoiled in each way
CASES = [
    (
        "wan",
        "lightx2v",
        ".lora_down.weight",
        ["nan", "inf", "one-nan", "int", "bool", "complex", "scalar", "vector", "3d"],
    ),
    ("wan", "lightx2v", ".lora_up.weight", ["nan", "int", "scalar", "vector", "3d"]),
    ("wan", "lightx2v", ".diff_b", ["nan", "inf", "int", "scalar"]),
    ("wan", "lightx2v", ".diff_m", ["nan", "one-nan", "bool", "scalar"]),
    ("wan", "lightx2v", "head.head.diff", ["nan", "int", "scalar", "vector"]),
    ("qwen", "comfy", ".lora_down.weight", ["nan", "one-nan", "int", "complex", "scalar", "vector", "3d"]),
    ("qwen", "comfy", ".lora_up.weight", ["inf", "bool", "scalar", "vector"]),
    ("qwen", "lightning", ".alpha", ["nan", "inf", "bool", "complex", "several"]),
]


def build(family: str, builder: str, pipe) -> dict:
    if family == "wan":
        return SL.wan_lightx2v_lora(pipe.transformer, rank=4, alpha=2.0, head="diff")
    if builder == "lightning":
        return SL.qwen_lightning_lora(pipe.transformer, rank=4, alpha=2.0)
    return SL.qwen_comfy_lora(pipe.transformer)


@pytest.mark.parametrize("family, builder, ending, hows", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_each_malformed_tensor_is_refused_naming_file_and_key(
    tmp_path, tiny_wan_pipeline, tiny_qwen_edit_pipeline, family, builder, ending, hows
):
    pipe = tiny_wan_pipeline if family == "wan" else tiny_qwen_edit_pipeline
    models = [pipe.transformer] + ([pipe.transformer_2] if family == "wan" else [])
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]
    good = build(family, builder, pipe)
    key = first_key(good, ending)
    for how in hows:
        path = SL.save_lora({**good, key: malformed(good[key], how)}, tmp_path / f"{how}.safetensors")
        text = f"{path}:1.0" + (":both" if family == "wan" else "")
        with pytest.raises(CliError) as err:
            L.load_loras(pipe, [L.parse_lora_spec(text, family)], family)
        message = str(err.value)
        assert path.name in message and key in message and SAYS[how] in message, (how, message)
        assert "applies to nothing" not in message and err.value.code == ExitCode.USAGE
        assert not any(has_lora_layers(m) for m in models)
        for m, params in zip(models, before, strict=True):
            assert all(torch.equal(p, params[n]) for n, p in m.named_parameters()), (how, "model changed")


@pytest.mark.parametrize("shape", [(0, 32), (4, 0)], ids=["rank-0", "no-inputs"])
def test_an_empty_pair_is_refused_not_divided_by(tmp_path, tiny_wan_pipeline, shape):
    """A rank-0 pair made alpha / rank a division by zero."""
    good = SL.wan_lightx2v_lora(tiny_wan_pipeline.transformer, rank=4, alpha=2.0, head="diff")
    key = first_key(good, ".lora_down.weight")
    path = SL.save_lora({**good, key: torch.zeros(shape)}, tmp_path / "empty.safetensors")
    with pytest.raises(CliError, match=r"empty\.safetensors.*no elements"):
        L.load_loras(tiny_wan_pipeline, [L.parse_lora_spec(f"{path}:1.0:both", "wan")], "wan")


def test_fp8_and_float64_pairs_load_like_float32(tmp_path, tiny_qwen_edit_pipeline):
    """Other floating-point storage is a form, not damage: it loads and changes the model the same way."""
    pipe = tiny_qwen_edit_pipeline
    good = SL.qwen_comfy_lora(pipe.transformer)
    reference = {}
    for dtype in (torch.float32, torch.float64, torch.float8_e4m3fn):
        sd = {k: v.to(dtype) if v.ndim else v for k, v in good.items()}  # alphas stay float32
        path = SL.save_lora(sd, tmp_path / f"{dtype}.safetensors".replace("torch.", ""))
        report = L.load_loras(pipe, [L.parse_lora_spec(f"{path}:1.0", "qwen")], "qwen")
        state = {
            re.sub(r"\.(lora_[AB])\.[^.]+\.", r".\1.", n): p.detach().float().clone()
            for n, p in pipe.transformer.named_parameters()
            if "lora_" in n
        }
        assert state and report.loras[0].experts[0].lora_modules_applied > 0
        reference[dtype] = state
        L.unload_loras(pipe, report)
    for name, value in reference[torch.float32].items():
        assert torch.allclose(reference[torch.float64][name], value)
        assert torch.allclose(reference[torch.float8_e4m3fn][name], value, rtol=0.07, atol=1e-3), name


def save(tmp_path, name, state_dict):
    return SL.save_lora(state_dict, tmp_path / f"{name}.safetensors")


def spec(path, target="both"):
    return L.parse_lora_spec(f"{path}:1.0:{target}", "wan")


def expert(report, component):
    return next(e for e in report.loras[0].experts if e.component == component)


# ---------------------------------------------------------------- hand-made malformed pairs (from test_lora.py)

Q = "diffusion_model.blocks.0.self_attn.q"


def _pair(**overrides):
    g = torch.Generator().manual_seed(5)
    sd = {f"{Q}.lora_down.weight": torch.randn(4, 32, generator=g),
          f"{Q}.lora_up.weight": torch.randn(32, 4, generator=g),
          f"{Q}.alpha": torch.tensor(4.0)}
    return {**sd, **overrides}


@pytest.mark.parametrize("name, state, key, says", [
    ("alpha-several", _pair(**{f"{Q}.alpha": torch.tensor([4.0, 4.0])}), f"{Q}.alpha", "alpha with 2 elements"),
    ("alpha-bool", _pair(**{f"{Q}.alpha": torch.tensor(True)}), f"{Q}.alpha", "not a number"),
    ("int-down", _pair(**{f"{Q}.lora_down.weight": torch.ones(4, 32, dtype=torch.int32)}), f"{Q}.lora_down.weight",
     "torch.int32 values"),
    ("bool-up", _pair(**{f"{Q}.lora_up.weight": torch.ones(32, 4, dtype=torch.bool)}), f"{Q}.lora_up.weight",
     "torch.bool values"),
    ("scalar-down", _pair(**{f"{Q}.lora_down.weight": torch.tensor(1.0)}), f"{Q}.lora_down.weight", "is a scalar"),
    ("scalar-diff-b", _pair(**{f"{Q}.diff_b": torch.tensor(0.5)}), f"{Q}.diff_b", "is a scalar"),
    ("nan-up", _pair(**{f"{Q}.lora_up.weight": torch.full((32, 4), float("nan"))}), f"{Q}.lora_up.weight", "NaN"),
    ("inf-alpha", _pair(**{f"{Q}.alpha": torch.tensor(float("inf"))}), f"{Q}.alpha", "infinite"),
    ("nan-diff-m", {"diffusion_model.blocks.0.diff_m": torch.full((1, 6, 32), float("nan"))},
     "diffusion_model.blocks.0.diff_m", "NaN"),
    ("inf-bf16-diff", _pair(**{f"{Q}.diff": torch.full((32, 32), float("inf"), dtype=torch.bfloat16)}), f"{Q}.diff",
     "infinite"),
])
def test_malformed_tensors_are_refused_before_loading(tmp_path, tiny_wan_pipeline, name, state, key, says):
    """Each crashed, was 'applies to nothing', or (NaN deltas) was applied and gave a black clip."""
    wan = tiny_wan_pipeline
    path = save(tmp_path, name, state)
    before = {n: p.detach().clone() for n, p in wan.transformer.named_parameters()}
    with pytest.raises(CliError) as err:
        L.load_loras(wan, [spec(path)], "wan")
    assert path.name in str(err.value) and key in str(err.value) and says in str(err.value)
    assert "download it again" in err.value.fix
    assert not has_lora_layers(wan.transformer) and not has_lora_layers(wan.transformer_2)
    assert all(torch.equal(p, before[n]) for n, p in wan.transformer.named_parameters())


def test_modulation_diff_spelling_is_applied_like_diff_m(tmp_path, tiny_wan_pipeline):
    """`blocks.N.modulation.diff` (ComfyUI extractors) is the `blocks.N.diff_m` tensor: same parameter, same change."""
    wan = tiny_wan_pipeline
    delta = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(7)) * 0.01
    table = wan.transformer.blocks[0].scale_shift_table
    original = table.detach().clone()
    results = {}
    for spelling in ("diff_m", "modulation.diff"):
        path = save(tmp_path, spelling, _pair(**{f"diffusion_model.blocks.0.{spelling}": delta}))
        report = L.load_loras(wan, [spec(path, target="high")], "wan")
        e = expert(report, "transformer")
        assert e.deltas_applied == e.deltas == 1 and not e.partial
        results[spelling] = table.detach().clone()
        L.unload_loras(wan, report)
        assert torch.equal(table, original)
    assert torch.equal(results["diff_m"], results["modulation.diff"])
    assert torch.allclose(results["diff_m"], original + delta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e5m2])
def test_finiteness_is_read_from_the_extremes_in_every_float_form(dtype):
    """One NaN or infinity anywhere is found (aminmax carries NaN; fp8, which it does not take, is read in float32)."""
    from producer.engines.loras.lora_files import _finite

    clean = torch.linspace(-3, 3, 1000)
    assert _finite(clean.to(dtype)) and _finite(torch.tensor(0.5).to(dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoiled = clean.clone()
        spoiled[537] = bad
        assert not _finite(spoiled.to(dtype)), (dtype, bad)
