"""LoRA loading: every key format into the right expert, counts that match what loaded, deltas applied
exactly or reported, partial and wrong-model LoRAs refused, fused == unfused, alpha/rank exact."""

import json
import logging

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from producer.cli import CliError, ExitCode
from producer.engines.loras import lora as L
from producer.testing import standin_gguf, standin_models, standins
from producer.testing import standin_loras as SL

WAN_EXPERTS = ("transformer", "transformer_2")


# ---------------------------------------------------------------- helpers


def wan_out(transformer) -> torch.Tensor:
    """One forward pass of a Wan expert on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 36, 1, 4, 4, generator=g)
    text = torch.randn(1, 4, transformer.config.text_dim, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=text,
                           return_dict=False)[0]


def qwen_out(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, transformer.config.in_channels, generator=g)
    text = torch.randn(1, 5, transformer.config.joint_attention_dim, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([0.5]),
                           encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long),
                           img_shapes=[[(1, 2, 2), (1, 2, 2)]], return_dict=False)[0]


def outputs(pipe, family="wan") -> dict:
    if family == "qwen":
        return {"transformer": qwen_out(pipe.transformer)}
    return {c: wan_out(getattr(pipe, c)) for c in WAN_EXPERTS}


def save(tmp_path, name, state_dict):
    return SL.save_lora(state_dict, tmp_path / f"{name}.safetensors")


def spec(path, strength=1.0, target="both", family="wan"):
    text = f"{path}:{strength}" + (f":{target}" if family == "wan" else "")
    return L.parse_lora_spec(text, family)


def expert(report, component, index=0):
    return next(e for e in report.loras[index].experts if e.component == component)


def skipped(expert_report, reason):
    return sum(s.count for s in expert_report.skipped if s.reason == reason)


def has_lora_layers(model) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def with_lora_writers(monkeypatch):
    """Until standins._lora_writers returns our writers, patch in that one call for the test."""
    if "wan-lightning" not in standins.writers():
        monkeypatch.setattr(standins, "_lora_writers", SL.lora_writers)


@pytest.fixture
def wan(tiny_wan_pipeline):
    return tiny_wan_pipeline


@pytest.fixture
def qwen(tiny_qwen_edit_pipeline):
    return tiny_qwen_edit_pipeline


@pytest.fixture
def kijai(tmp_path, wan):
    """The LightX2V Wan 2.2 distill layout: pairs + alpha, diff_b, diff_m, norm diffs (some zero), head.head.diff."""
    return save(tmp_path, "kijai", SL.wan_lightx2v_lora(wan.transformer, rank=4, alpha=2.0, head="diff"))


# ---------------------------------------------------------------- the command-line syntax


@pytest.mark.parametrize("text, family, path, strength, components", [
    ("x.safetensors", "wan", "x.safetensors", 1.0, WAN_EXPERTS),
    ("x.safetensors:0.8", "wan", "x.safetensors", 0.8, WAN_EXPERTS),
    ("x.safetensors:0.8:high", "wan", "x.safetensors", 0.8, ("transformer",)),
    ("x.safetensors:1.5:LOW", "wan", "x.safetensors", 1.5, ("transformer_2",)),
    ("x.safetensors:-0.5:both", "wan", "x.safetensors", -0.5, WAN_EXPERTS),
    ("x.safetensors:high", "wan", "x.safetensors", 1.0, ("transformer",)),
    ("C:\\loras\\x.safetensors", "wan", "C:\\loras\\x.safetensors", 1.0, WAN_EXPERTS),
    ("C:\\loras\\x.safetensors:0.8", "wan", "C:\\loras\\x.safetensors", 0.8, WAN_EXPERTS),
    ("C:/loras/x.safetensors:0.8:low", "wan", "C:/loras/x.safetensors", 0.8, ("transformer_2",)),
    ("x.safetensors:0.7", "qwen", "x.safetensors", 0.7, ("transformer",)),
    ("D:\\q.safetensors:1", "qwen", "D:\\q.safetensors", 1.0, ("transformer",)),
])
def test_spec_syntax(text, family, path, strength, components):
    parsed = L.parse_lora_spec(text, family, must_exist=False)
    assert (str(parsed.path), parsed.strength, parsed.components) == (path, strength, components)


@pytest.mark.parametrize("text, family, says", [
    ("x.safetensors:abc", "wan", "neither a strength nor an expert"),
    ("x.safetensors:0,8", "wan", "not a number"),
    ("x.safetensors:nan", "wan", "outside"),
    ("x.safetensors:50", "wan", "outside"),
    (":0.5", "wan", "names no file"),
    ("", "wan", "names no file"),
    ("x.safetensors:0.5:high", "qwen", "one transformer"),
    ("x.safetensors:0.5:middle", "wan", "neither a strength nor an expert"),
    ("x.pt", "wan", "pickle"),
    ("x.pth:0.5", "wan", "pickle"),
    ("C:\\x.ckpt:0.5:high", "wan", "pickle"),
    ("x.bin", "qwen", "pickle"),
    ("x.gguf", "wan", "GGUF"),
    ("x.txt", "wan", ".safetensors"),
])
def test_bad_specs_name_the_fix(text, family, says):
    with pytest.raises(CliError) as err:
        L.parse_lora_spec(text, family, must_exist=False)
    assert says in err.value.message and err.value.fix and err.value.code == ExitCode.USAGE


def test_missing_file_is_refused_early(tmp_path):
    with pytest.raises(CliError, match="nope.safetensors does not exist"):
        L.parse_lora_spec(str(tmp_path / "nope.safetensors"), "wan")


def test_a_pickle_is_never_opened(tmp_path, wan):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(CliError, match="pickles can run arbitrary code"):
        L.load_loras(wan, [L.LoraSpec(path)], "wan")
    assert not has_lora_layers(wan.transformer)


# ---------------------------------------------------------------- key formats, experts, strengths


@pytest.mark.parametrize("fmt", ["kijai", "kijai_ab", "diffusers", "musubi"])
def test_wan_formats_load_into_the_chosen_expert_only(tmp_path, wan, fmt):
    builders = {
        "kijai": lambda t: SL.wan_lightx2v_lora(t, alpha=2.0),
        "kijai_ab": lambda t: SL.wan_lightx2v_lora(t, pair=SL.PAIR_A_B, alpha=None),
        "diffusers": SL.wan_diffusers_lora,
        "musubi": SL.wan_musubi_lora,
    }
    sd = builders[fmt](wan.transformer)
    pairs = sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in sd)
    before = outputs(wan)
    report = L.load_loras(wan, [spec(save(tmp_path, fmt, sd), 0.9, "low")], "wan")
    after = outputs(wan)
    assert torch.equal(after["transformer"], before["transformer"])  # the high-noise expert is untouched
    assert not torch.allclose(after["transformer_2"], before["transformer_2"], atol=1e-4)
    low = expert(report, "transformer_2")
    assert (low.lora_modules, low.lora_modules_applied, low.strength) == (pairs, pairs, 0.9)
    assert not low.partial and not has_lora_layers(wan.transformer)


@pytest.mark.parametrize("fmt", ["lightning", "comfy", "comfy_ab", "diffusers", "diffusers_no_prefix"])
def test_qwen_formats_load(tmp_path, qwen, fmt):
    builders = {
        "lightning": SL.qwen_lightning_lora,
        "comfy": SL.qwen_comfy_lora,
        "comfy_ab": lambda t: SL.qwen_comfy_lora(t, pair=SL.PAIR_A_B, alpha=2.0),
        "diffusers": SL.qwen_diffusers_lora,
        # diffusers naming without `transformer.`: load_lora_adapter alone would load nothing
        "diffusers_no_prefix": lambda t: SL.qwen_diffusers_lora(t, prefix=""),
    }
    sd = builders[fmt](qwen.transformer)
    pairs = sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in sd)
    before = qwen_out(qwen.transformer)
    report = L.load_loras(qwen, [spec(save(tmp_path, fmt, sd), family="qwen")], "qwen")
    assert not torch.allclose(qwen_out(qwen.transformer), before, atol=1e-4)
    e = expert(report, "transformer")
    assert (e.lora_modules, e.lora_modules_applied, e.role) == (pairs, pairs, "transformer")


def test_strength_zero_gives_the_base_output_exactly(kijai, wan):
    before = outputs(wan)
    L.load_loras(wan, [spec(kijai, 0.0)], "wan")
    after = outputs(wan)
    assert all(torch.equal(after[c], before[c]) for c in WAN_EXPERTS)


def test_per_expert_strengths_reach_each_expert(tmp_path, wan):
    path = save(tmp_path, "d", SL.wan_diffusers_lora(wan.transformer))
    L.load_loras(wan, [spec(path, 3.0, "high"), spec(path, 1.5, "low")], "wan")
    q_high, q_low = wan.transformer.blocks[0].attn1.to_q, wan.transformer_2.blocks[0].attn1.to_q
    assert list(q_high.scaling.values()) == [3.0] and list(q_low.scaling.values()) == [1.5]


# ---------------------------------------------------------------- counts, deltas, skipped keys


def test_report_counts_and_exact_deltas(kijai, wan):
    from safetensors.torch import load_file

    sd = load_file(kijai)
    t = wan.transformer
    orig = {"mod": t.blocks[0].scale_shift_table.clone(), "bias": t.blocks[0].attn1.to_q.bias.clone(),
            "norm": t.blocks[0].norm2.weight.clone(), "head": t.proj_out.weight.clone(),
            "patch": t.patch_embedding.bias.clone()}
    report = L.load_loras(wan, [spec(kijai, 0.7, "high")], "wan")
    s = 0.7
    p = "diffusion_model."
    # each delta: parameter == original + strength * delta, to the bit (float32 model)
    assert torch.equal(t.blocks[0].scale_shift_table, orig["mod"] + s * sd[f"{p}blocks.0.diff_m"])
    assert torch.equal(t.blocks[0].attn1.to_q.base_layer.bias, orig["bias"] + s * sd[f"{p}blocks.0.self_attn.q.diff_b"])
    assert torch.equal(t.blocks[0].norm2.weight, orig["norm"] + s * sd[f"{p}blocks.0.norm3.diff"])  # norm3 -> norm2
    assert torch.equal(t.proj_out.weight, orig["head"] + s * sd[f"{p}head.head.diff"])
    assert torch.equal(t.patch_embedding.bias, orig["patch"] + s * sd[f"{p}patch_embedding.diff_b"])

    deltas = [k for k in sd if k.endswith((".diff", ".diff_b", ".diff_m"))]
    zero = [k for k in deltas if not sd[k].any()]
    e = expert(report, "transformer")
    assert (e.lora_modules, e.lora_modules_applied) == (sum(k.endswith(".lora_down.weight") for k in sd),) * 2
    assert (e.deltas, e.deltas_applied) == (len(deltas), len(deltas) - len(zero))
    assert skipped(e, L.ZERO_DELTA) == len(zero) > 0 and not e.partial
    assert len(report.loras[0].experts) == 1 and report.loras[0].scales == [0.5]  # alpha 2 / rank 4


def test_wan21_image_keys_are_reported_not_applicable(tmp_path, wan):
    sd = SL.wan_lightx2v_lora(wan.transformer, wan21_image_keys=True)
    image_keys = [k for k in sd if any(n in k for n in ("k_img", "v_img", "img_emb"))]
    report = L.load_loras(wan, [spec(save(tmp_path, "w21", sd))], "wan")  # no allow_partial needed
    for component in WAN_EXPERTS:
        e = expert(report, component)
        assert skipped(e, L.NOT_APPLICABLE) == len(image_keys) and not e.partial
    assert json.loads(json.dumps(report.to_dict()))["loras"][0]["experts"][0]["partial"] is False


def test_diffusers_drops_what_we_apply(wan):
    """Evidence for diffusers 0.42.1: its converter keeps no .diff_m, no norm .diff, no patch_embedding.diff_b
    (and refuses alpha keys outside the blocks, hence alpha=None here)."""
    sd = SL.wan_lightx2v_lora(wan.transformer, alpha=None, head="diff")
    converted = wan.lora_state_dict(dict(sd))
    assert not any("scale_shift_table" in k or "norm" in k or "patch_embedding" in k for k in converted)
    assert any(sd[k].any() for k in sd if k.endswith((".diff_m", "norm3.diff", "patch_embedding.diff_b")))


# ---------------------------------------------------------------- refusals


def partial_lora(wan):
    """Blocks 0-1 fit; a third block does not exist and one layer is the wrong width."""
    sd = SL.wan_lightx2v_lora(wan.transformer, deltas=False, alpha=None)
    p = "diffusion_model."
    sd[f"{p}blocks.7.self_attn.q.lora_down.weight"] = torch.randn(4, 32)
    sd[f"{p}blocks.7.self_attn.q.lora_up.weight"] = torch.randn(32, 4)
    sd[f"{p}blocks.0.cross_attn.k.lora_down.weight"] = torch.randn(4, 48)
    return sd


def test_partial_lora_is_refused_without_allow_partial(tmp_path, wan):
    path = save(tmp_path, "partial", partial_lora(wan))
    with pytest.raises(CliError) as err:
        L.load_loras(wan, [spec(path)], "wan")
    assert "only in part" in err.value.message and L.ALLOW_PARTIAL_HINT in err.value.fix
    assert "no such module" in err.value.message and "shape mismatch" in err.value.message
    assert not has_lora_layers(wan.transformer) and not has_lora_layers(wan.transformer_2)


def test_partial_lora_loads_with_allow_partial(tmp_path, wan, caplog):
    sd = partial_lora(wan)
    pairs = sum(k.endswith(".lora_down.weight") for k in sd)
    with caplog.at_level(logging.INFO, logger="producer"):
        report = L.load_loras(wan, [spec(save(tmp_path, "partial", sd))], "wan", allow_partial=True)
    e = expert(report, "transformer")
    assert (e.lora_modules, e.lora_modules_applied, e.lost) == (pairs, pairs - 2, 4) and e.partial
    assert any(r.levelno == logging.WARNING and "LOST" in r.message for r in caplog.records)
    assert any("low-noise expert (transformer_2)" in r.message for r in caplog.records)


@pytest.mark.parametrize("model, says", [("flux", "looks like a LoRA for Flux"),
                                         ("sdxl", "looks like a LoRA for Stable Diffusion")])
def test_lora_for_another_model_is_refused(tmp_path, wan, model, says):
    path = save(tmp_path, model, SL.other_model_lora(model))
    with pytest.raises(CliError) as err:
        L.load_loras(wan, [spec(path)], "wan", allow_partial=True)  # never partial: refused outright
    assert says in err.value.message and "none of its" in err.value.message and "Wan 2.2" in err.value.message


def test_wan_lora_into_qwen_and_back_is_refused(tmp_path, wan, qwen):
    wan_path = save(tmp_path, "w", SL.wan_diffusers_lora(wan.transformer))
    with pytest.raises(CliError, match="looks like a LoRA for Wan"):
        L.load_loras(qwen, [spec(wan_path, family="qwen")], "qwen")
    qwen_path = save(tmp_path, "q", SL.qwen_lightning_lora(qwen.transformer))
    with pytest.raises(CliError, match="looks like a LoRA for Qwen-Image"):
        L.load_loras(wan, [spec(qwen_path)], "wan")


def test_lora_for_another_wan_size_names_the_widths(tmp_path, wan):
    from diffusers import WanTransformer3DModel

    small = WanTransformer3DModel(**{**standin_models.WAN_TRANSFORMER_CONFIG, "attention_head_dim": 8})
    path = save(tmp_path, "small", SL.wan_diffusers_lora(small))
    with pytest.raises(CliError, match="another size: its layers are 16 wide, the Wan 2.2 transformer's are 32"):
        L.load_loras(wan, [spec(path)], "wan")


def test_a_lora_that_changes_nothing_is_an_error(tmp_path, wan):
    zeros = {"diffusion_model.blocks.0.self_attn.norm_q.diff": torch.zeros(32)}
    with pytest.raises(CliError, match="has no effect"):
        L.load_loras(wan, [spec(save(tmp_path, "zeros", zeros))], "wan")


# ---------------------------------------------------------------- alpha, fusing, unloading


def test_alpha_over_rank_is_applied_exactly(tmp_path, wan):
    """Strength 1 with alpha 8, rank 64 == W + (8/64)·B·A, through diffusers' own loader and through ours."""
    layer = "blocks.0.attn1.to_q"
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(64, 32, generator=g), torch.randn(32, 64, generator=g)
    key = "diffusion_model.blocks.0.self_attn.q"
    sd = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(8.0)}
    expected = wan.transformer.get_submodule(layer).weight.detach() + (8 / 64) * up @ down

    wan.load_lora_weights(dict(sd), adapter_name="plain_diffusers")
    wan.transformer.fuse_lora(adapter_names=["plain_diffusers"])
    assert torch.allclose(wan.transformer.get_submodule(layer).base_layer.weight, expected, atol=1e-5)

    ours = standin_models.build_wan_pipeline(0)
    report = L.load_loras(ours, [spec(save(tmp_path, "a8", sd), 1.0, "high")], "wan", fuse=True)
    assert torch.allclose(ours.transformer.get_submodule(layer).weight, expected, atol=1e-5)
    assert (report.loras[0].ranks, report.loras[0].alphas, report.loras[0].scales) == ([64], [8.0], [0.125])


def test_fused_equals_unfused_and_leaves_no_lora_layers(kijai):
    unfused, fused = standin_models.build_wan_pipeline(0), standin_models.build_wan_pipeline(0)
    L.load_loras(unfused, [spec(kijai, 0.8)], "wan")
    report = L.load_loras(fused, [spec(kijai, 0.8)], "wan", fuse=True)
    a, b = outputs(unfused), outputs(fused)
    assert all(torch.allclose(a[c], b[c], atol=1e-5) for c in WAN_EXPERTS)
    assert report.fused and all(e.fused for e in report.loras[0].experts)
    assert not has_lora_layers(fused.transformer) and not has_lora_layers(fused.transformer_2)


def test_diffusers_default_fuse_skips_the_low_noise_expert(tmp_path, wan):
    """Evidence for diffusers 0.42.1: WanLoraLoaderMixin.fuse_lora() fuses components=['transformer'] only."""
    sd = SL.wan_diffusers_lora(wan.transformer)
    wan.load_lora_weights(dict(sd), adapter_name="a")
    wan.load_lora_weights(dict(sd), adapter_name="a", load_into_transformer_2=True)
    wan.fuse_lora()
    assert wan.transformer.blocks[0].attn1.to_q.merged and not wan.transformer_2.blocks[0].attn1.to_q.merged


def test_unload_restores_every_parameter_exactly(kijai, wan):
    state = {c: {k: v.clone() for k, v in getattr(wan, c).state_dict().items()} for c in WAN_EXPERTS}
    before = outputs(wan)
    report = L.load_loras(wan, [spec(kijai, 0.8)], "wan")
    L.unload_loras(wan, report)
    for c in WAN_EXPERTS:
        after = getattr(wan, c).state_dict()
        assert set(after) == set(state[c]) and all(torch.equal(after[k], v) for k, v in state[c].items())
    assert all(torch.equal(outputs(wan)[c], before[c]) for c in WAN_EXPERTS)


def test_a_failure_after_loading_rolls_everything_back(kijai, wan, monkeypatch):
    before = outputs(wan)

    def broken(*args, **kwargs):
        raise RuntimeError("set_adapters broke")

    monkeypatch.setattr(L, "_activate", broken)
    with pytest.raises(RuntimeError, match="set_adapters broke"):
        L.load_loras(wan, [spec(kijai, 0.8)], "wan")
    assert not L._present_adapters(wan)
    assert all(torch.equal(outputs(wan)[c], before[c]) for c in WAN_EXPERTS)


def test_modules_that_loaded_other_values_than_the_file_count_as_lost(kijai, wan, monkeypatch):
    """'Applied' is what the loaded adapter computes, checked against the file, not what was handed over."""
    convert = L._adapter_state_dict

    def alpha_applied_twice(pipe, plan, modules):
        converted = convert(pipe, plan, modules)
        key = next(k for k in converted if k.endswith("blocks.0.attn1.to_q.lora_B.weight"))
        converted[key] = converted[key] * 0.5
        return converted

    before = outputs(wan)
    monkeypatch.setattr(L, "_adapter_state_dict", alpha_applied_twice)
    with pytest.raises(CliError, match="loaded with other values than the file's"):
        L.load_loras(wan, [spec(kijai)], "wan")
    assert not L._present_adapters(wan) and all(torch.equal(outputs(wan)[c], before[c]) for c in WAN_EXPERTS)


def test_loading_twice_without_unloading_is_refused(tmp_path, wan):
    path = save(tmp_path, "d", SL.wan_diffusers_lora(wan.transformer))
    L.load_loras(wan, [spec(path)], "wan")
    with pytest.raises(RuntimeError, match="unload_loras"):
        L.load_loras(wan, [spec(path)], "wan")


def test_strength_equal_to_alpha_over_rank_is_warned_about(tmp_path, qwen, caplog):
    path = save(tmp_path, "lightning", SL.qwen_lightning_lora(qwen.transformer))  # alpha 8, rank 64
    with caplog.at_level(logging.WARNING, logger="producer"):
        L.load_loras(qwen, [spec(path, 0.125, family="qwen")], "qwen")
    assert "already applies alpha/rank" in caplog.text


# ---------------------------------------------------------------- GGUF experts


@pytest.fixture
def gguf_wan(tmp_path, wan):
    """The Wan stand-in with a Q8_0 GGUF high-noise expert (original key names, as ComfyUI-GGUF writes them)."""
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel

    wan.transformer.save_config(tmp_path / "config" / "transformer")
    path = tmp_path / "high.gguf"
    standin_gguf.write_gguf(path, standin_gguf.wan_state_dict_to_original(wan.transformer.state_dict()), "wan", "Q8_0")
    wan.transformer = WanTransformer3DModel.from_single_file(
        str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(tmp_path / "config"), subfolder="transformer")
    return wan


def test_gguf_expert_takes_the_lora_folded_and_the_head_delta_directly_and_gives_both_back(kijai, gguf_wan, monkeypatch):
    """In published GGUF files the head stays F16 (ComfyUI-GGUF's convert.py): head.head.diff is added to it.
    The pairs on GGUF layers are folded into the weight each layer dequantizes: no peft layer is left, and the
    expert computes what peft's unfused adapters compute (to float rounding)."""
    from safetensors.torch import load_file

    head = gguf_wan.transformer.proj_out
    assert getattr(head.weight, "quant_type", None) is None
    assert gguf_wan.transformer.blocks[0].attn1.to_q.weight.quant_type is not None
    head_before = head.weight.detach().float().clone()
    before = wan_out(gguf_wan.transformer)
    monkeypatch.setattr(L, "FOLD_GGUF", False)
    unfused_report = L.load_loras(gguf_wan, [spec(kijai, 0.5, "high")], "wan", fuse=True)
    assert not expert(unfused_report, "transformer").fused and has_lora_layers(gguf_wan.transformer)
    unfused = wan_out(gguf_wan.transformer)
    L.unload_loras(gguf_wan, unfused_report)
    monkeypatch.setattr(L, "FOLD_GGUF", True)
    report = L.load_loras(gguf_wan, [spec(kijai, 0.5, "high")], "wan", fuse=True)
    e = expert(report, "transformer")
    assert e.folded and not e.fused and not e.partial and e.deltas_applied == e.deltas - skipped(e, L.ZERO_DELTA)
    assert not has_lora_layers(gguf_wan.transformer) and not L._present_adapters(gguf_wan)
    folded = wan_out(gguf_wan.transformer)
    assert not torch.allclose(folded, before, atol=1e-4)
    assert torch.allclose(folded, unfused, atol=1e-5)
    diff = load_file(kijai)["diffusion_model.head.head.diff"].float()
    assert torch.allclose(gguf_wan.transformer.proj_out.weight.float(), head_before + 0.5 * diff, atol=1e-3)
    L.unload_loras(gguf_wan, report)  # the GGUF weights were never changed: the folded LoRA comes out exactly
    assert torch.equal(wan_out(gguf_wan.transformer), before) and torch.equal(head.weight.float(), head_before)


def test_a_weight_delta_on_a_quantized_linear_rides_as_an_identity_pair(tmp_path, gguf_wan):
    """A .diff for a GGUF-quantized linear cannot be added to it: it loads as a LoRA pair with an identity
    factor, so the layer adds strength * diff @ x."""
    diff = torch.randn(32, 32, generator=torch.Generator().manual_seed(4)) * 0.01
    path = save(tmp_path, "o_diff", {"diffusion_model.blocks.0.self_attn.o.diff": diff})
    layer_path = "blocks.0.attn1.to_out.0"
    assert gguf_wan.transformer.get_submodule(layer_path).weight.quant_type is not None
    report = L.load_loras(gguf_wan, [spec(path, 0.5, "high")], "wan")
    e = expert(report, "transformer")
    assert e.deltas_applied == e.deltas == 1 and not e.partial
    layer = gguf_wan.transformer.get_submodule(layer_path)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        added = layer(x) - layer.base_layer(x)
    assert torch.allclose(added, 0.5 * x @ diff.T, atol=1e-5)


def test_a_delta_that_cannot_reach_a_quantized_weight_is_lost(tmp_path, gguf_wan):
    """A layer with both a LoRA pair and a weight .diff: the pair takes the adapter slot, the delta is lost."""
    sd = SL.wan_lightx2v_lora(gguf_wan.transformer_2, deltas=False, alpha=None)
    sd["diffusion_model.blocks.0.self_attn.q.diff"] = torch.full((32, 32), 0.01)
    path = save(tmp_path, "q_diff", sd)
    with pytest.raises(CliError, match="cannot add a delta to quantized weights"):
        L.load_loras(gguf_wan, [spec(path, 1.0, "high")], "wan")
    report = L.load_loras(gguf_wan, [spec(path, 1.0, "high")], "wan", allow_partial=True)
    assert expert(report, "transformer").lost == 1
