"""The tiny stand-ins: real classes, real repo layouts, offline resolution, GGUF files that diffusers reads."""

import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from producer.facts import registry
from producer.testing import standin_gguf, standin_models, standins

WAN_REVISION = registry.get("wan-i2v").revision
GGUF_TOLERANCE = {  # max |dequantized - original| as a fraction of the tensor's largest |value|
    "F32": 0.0,
    "F16": 1e-3,
    "Q8_0": 1 / 127 + 1e-3,  # half a step of 1/127 of the block's max, plus the float16 scale
    "Q4_0": 1 / 8 + 1e-3,  # the block's max maps to -8 steps; the other end reaches 7
    "Q5_0": 1 / 16 + 1e-3,  # gguf's reference quantizer truncates: up to one step of 1/16 of the block's max
    "Q4_K": 0.08,  # half of a (range/15) step, with 6-bit scales rounded up
    "Q6_K": 1 / 62 + 1 / 127,  # half a step of the sub-block's max/31, with int8 scales rounded up
}


def _image(size=64):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


@contextlib.contextmanager
def _forward_calls(**modules):
    """Count forward calls per named module (proves which experts really ran)."""
    calls = dict.fromkeys(modules, 0)
    handles = [m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, m in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _wan_video(pipe, steps=4, guidance=1.0):
    return pipe(image=_image(), prompt="a cat turns its head", height=64, width=64, num_frames=9,
                num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0), max_sequence_length=32).frames


def _qwen_edit(pipe, images):
    return pipe(image=images, prompt="make the cat smile", height=64, width=64, num_inference_steps=2,
                true_cfg_scale=1.0, output_type="np", generator=torch.Generator().manual_seed(0)).images


def _snapshot(install, name) -> Path:
    return Path(install.manifest[name]["snapshot"])


def _gguf_types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def _gguf_field(path, key):
    from gguf import GGUFReader

    return GGUFReader(path).get_field(key).contents()


def _assert_gguf_matches(loaded, reference, types_by_name, to_file_name=lambda name: name):
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    ref = reference.state_dict()
    checked = 0
    for name, value in loaded.state_dict().items():
        if name not in ref:  # rope buffers
            continue
        original = ref[name].float()
        gguf_type = types_by_name[to_file_name(name)]
        error = (dequantize_gguf_tensor(value).float() - original).abs().max().item()
        assert error <= GGUF_TOLERANCE[gguf_type] * original.abs().max().item() + 1e-7, (name, gguf_type, error)
        checked += 1
    assert checked == len(types_by_name)


# ---------------------------------------------------------------- in-memory builds


def test_wan_pipeline_runs_both_experts_on_cpu(tiny_wan_pipeline):
    pipe = tiny_wan_pipeline
    assert pipe.config.boundary_ratio == 0.9 and pipe.image_encoder is None
    assert pipe.transformer.config.in_channels == 36 and pipe.transformer.config.out_channels == 16
    assert pipe.transformer.config.qk_norm == "rms_norm_across_heads" and pipe.transformer.config.image_dim is None
    assert pipe.vae.config.z_dim == pipe.transformer.config.out_channels
    parameters = sum(p.numel() for m in (pipe.transformer, pipe.text_encoder, pipe.vae) for p in m.parameters())
    assert parameters < 1_000_000, "stand-ins must stay tiny: the suite builds them many times"
    with _forward_calls(high=pipe.transformer, low=pipe.transformer_2) as calls:
        frames = _wan_video(pipe)
    assert frames.shape == (1, 9, 64, 64, 3) and np.isfinite(frames).all()
    assert calls == {"high": 2, "low": 2}  # shift 5 puts 1000 and ~937 above the 900 boundary


def test_builds_are_seeded_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first_high, first_low = standin_models.build_wan_experts(seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    again_high, _ = standin_models.build_wan_experts(seed=0)
    other_high, _ = standin_models.build_wan_experts(seed=1)
    weight = "blocks.0.attn1.to_q.weight"
    assert torch.equal(first_high.state_dict()[weight], again_high.state_dict()[weight])
    assert not torch.equal(first_high.state_dict()[weight], other_high.state_dict()[weight])
    assert not torch.equal(first_high.state_dict()[weight], first_low.state_dict()[weight])


def test_qwen_token_layout_matches_the_text_encoder(tiny_qwen_edit_pipeline, tiny_qwen_t2i_pipeline):
    pipe = tiny_qwen_edit_pipeline
    tokenizer, config = pipe.tokenizer, pipe.text_encoder.config
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in standin_models.QWEN_SPECIAL_TOKENS}
    assert list(ids.values()) == sorted(ids.values()) and len(set(ids.values())) == len(ids)
    assert (config.image_token_id, config.video_token_id) == (ids["<|image_pad|>"], ids["<|video_pad|>"])
    assert (config.vision_start_token_id, config.vision_end_token_id) == (ids["<|vision_start|>"],
                                                                          ids["<|vision_end|>"])
    assert pipe.processor.image_token_id == ids["<|image_pad|>"]
    text = config.text_config
    assert 2 * sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads
    assert text.vocab_size >= len(tokenizer)
    assert pipe.transformer.config.zero_cond_t and not tiny_qwen_t2i_pipeline.transformer.config.zero_cond_t
    # The pipelines drop the template's system part by a fixed token count: it must not eat the prompt.
    for p in (pipe, tiny_qwen_t2i_pipeline):
        system_part = p.prompt_template_encode.split("{}")[0]
        assert len(tokenizer(system_part).input_ids) > p.prompt_template_encode_start_idx


def test_qwen_edit_encodes_references_at_the_standin_areas(tiny_qwen_edit_pipeline, qwen_standin_areas):
    """At the real 1024^2 reference area a tiny edit takes 20-40 s on a CPU; at the marker's, ~0.1 s."""
    pipe = tiny_qwen_edit_pipeline
    encoded_sizes = []
    hook = pipe.vae.encoder.register_forward_pre_hook(lambda _, args: encoded_sizes.append(args[0].shape[-2:]))
    try:
        images = _qwen_edit(pipe, [_image(), _image(48)])
    finally:
        hook.remove()
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert len(encoded_sizes) == 2 and all(h * w <= qwen_standin_areas[0] for h, w in encoded_sizes)


def test_qwen_edit_plus_without_an_image_fails_in_diffusers_0_42(tiny_qwen_edit_pipeline):
    """Pins upstream behaviour: __call__ reads `image.size` before anything else, so image=None raises.
    Text-to-image must use Qwen/Qwen-Image (QwenImagePipeline), not the edit pipeline. If this test
    starts failing, diffusers has changed that line."""
    with pytest.raises(AttributeError, match="size"):
        tiny_qwen_edit_pipeline(image=None, prompt="a cat", height=64, width=64, num_inference_steps=1)


def test_controlnet_changes_the_image(tiny_qwen_t2i_pipeline, tiny_qwen_controlnet):
    from diffusers import QwenImageControlNetPipeline

    pipe = QwenImageControlNetPipeline(**tiny_qwen_t2i_pipeline.components, controlnet=tiny_qwen_controlnet)

    def generate(scale):
        return pipe(prompt="a dancer", control_image=_image(), controlnet_conditioning_scale=scale, height=64,
                    width=64, num_inference_steps=2, true_cfg_scale=1.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    with_control, without = generate(1.0), generate(0.0)
    assert with_control.shape == (1, 64, 64, 3) and np.isfinite(with_control).all()
    assert np.abs(with_control - without).max() > 1e-4


# ---------------------------------------------------------------- GGUF format


def test_wan_original_keys_invert_the_diffusers_conversion():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = standin_models.build_wan_experts(seed=0)[0].state_dict()
    original = standin_gguf.wan_state_dict_to_original(state)
    for key in ("patch_embedding.weight", "blocks.0.self_attn.q.weight", "blocks.0.cross_attn.o.bias",
                "blocks.0.self_attn.norm_q.weight", "blocks.0.norm3.weight", "blocks.0.ffn.0.weight",
                "blocks.1.ffn.2.weight", "blocks.0.modulation", "head.modulation", "head.head.weight",
                "time_embedding.0.weight", "time_projection.1.weight", "text_embedding.2.bias"):
        assert key in original, key
    assert not any(re.search(r"attn1|attn2|to_q|scale_shift|condition_embedder|proj_out|norm2", k) for k in original)
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("shape", [(4, 256), (3, 512)])
def test_q4_k_blocks_decode_with_ggml_layout(shape):
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(1)
    rows = rng.normal(0, 0.05, shape).astype(np.float32)
    rows[0, :32] = 0.0  # an empty sub-block
    rows[1] = -np.abs(rows[1])  # a row below zero only
    rows[2, :256] = 0.3  # a constant block
    packed = standin_gguf.quantize_q4_k(rows)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], shape[1] // 256 * 144)
    decoded = quants.dequantize(packed, GGMLQuantizationType.Q4_K)
    assert decoded.shape == rows.shape
    sub_ranges = np.ptp(np.concatenate([rows.reshape(-1, 32), np.zeros((rows.size // 32, 1))], axis=1), axis=1)
    error = np.abs(decoded - rows).reshape(-1, 32).max(axis=1)
    assert (error <= sub_ranges / 15 * 0.6 + 0.05 / 63).all()  # about half a 4-bit step per sub-block
    assert np.abs(decoded[0, :32]).max() < 1e-6


@pytest.mark.parametrize("shape", [(2, 256), (3, 512)])
def test_q6_k_blocks_decode_with_ggml_layout(shape):
    """Packed by hand (the gguf package cannot quantize Q6_K), decoded by the gguf package and by diffusers."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(2)
    rows = rng.normal(0, 0.05, shape).astype(np.float32)
    rows[0, :16] = 0.0  # an empty sub-block
    rows[1, 16:32] = -0.3  # a constant negative sub-block
    rows[1, 32:48] = np.linspace(-1, 1, 16)  # one sub-block far wider than the rest
    packed = standin_gguf.quantize_q6_k(rows)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], shape[1] // 256 * 210)
    decoded = quants.dequantize(packed, GGMLQuantizationType.Q6_K)
    sub_max = np.abs(rows).reshape(-1, 16).max(axis=1)
    error = np.abs(decoded - rows).reshape(-1, 16).max(axis=1)
    block_max = np.repeat(np.abs(rows).reshape(-1, 256).max(axis=1), 16)
    assert (error <= sub_max / 62 + block_max / 31 / 127 + 1e-7).all()  # half a 6-bit step (+ the scale's rounding)
    assert np.abs(decoded[0, :16]).max() == 0.0
    via_diffusers = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(packed),
                                                         quant_type=GGMLQuantizationType.Q6_K))
    assert np.allclose(via_diffusers.float().numpy(), decoded, rtol=1e-3, atol=1e-6)  # diffusers decodes to float16


@pytest.mark.parametrize("name, scheme", [("wan-i2v-gguf-q4", "Q4_K_M"), ("wan-i2v-gguf-q8", "Q8_0")])
def test_wan_gguf_files_have_the_published_type_map(standin_install, name, scheme):
    """ComfyUI-GGUF convert.py + lcpp.patch: embeddings, time_projection and head F16; biases, norms,
    modulation and the 5-D patch embedding F32; Q4_K_M: v and ffn.2 Q6_K, other block linears Q4_K
    (the stand-in's 32-wide rows take llama-quantize's fallbacks Q8_0 and Q5_0); Q8_0: block linears Q8_0."""
    entry = registry.get(name)
    snapshot = _snapshot(standin_install, name)
    for role in ("transformer", "transformer_2"):
        path = snapshot / entry.roles[role]
        types = _gguf_types(path)
        assert _gguf_field(path, "general.architecture") == "wan"
        assert _gguf_field(path, "general.quantization_version") == 2
        for f16 in ("text_embedding.0.weight", "text_embedding.2.weight", "time_embedding.0.weight",
                    "time_embedding.2.weight", "time_projection.1.weight", "head.head.weight"):
            assert types[f16] == "F16", f16
        for f32 in ("patch_embedding.weight", "patch_embedding.bias", "blocks.0.modulation", "head.modulation",
                    "blocks.0.norm3.weight", "blocks.0.norm3.bias", "blocks.0.self_attn.norm_q.weight",
                    "blocks.0.self_attn.q.bias", "blocks.1.ffn.2.bias", "head.head.bias"):
            assert types[f32] == "F32", f32
        linears = [k for k in types if k.startswith("blocks.") and k.endswith(".weight") and "norm" not in k]
        for key in linears:
            if scheme == "Q8_0":
                assert types[key] == "Q8_0", key
            elif key.endswith((".v.weight", ".ffn.2.weight")):
                assert types[key] == ("Q6_K" if key.endswith("ffn.2.weight") else "Q8_0"), key  # 256 / 32 wide
            else:
                assert types[key] == "Q5_0", key  # Q4_K's fallback for 32-wide rows
        if scheme == "Q4_K_M":
            assert standin_gguf.gguf_tensor_type("blocks.0.self_attn.q.weight", (5120, 5120), scheme).name == "Q4_K"
            assert standin_gguf.gguf_tensor_type("blocks.0.self_attn.v.weight", (5120, 5120), scheme).name == "Q6_K"
            assert standin_gguf.gguf_tensor_type("blocks.0.ffn.2.weight", (5120, 13824), scheme).name == "Q6_K"


@pytest.mark.parametrize("name", ["wan-i2v-gguf-q4", "wan-i2v-gguf-q8"])
def test_wan_gguf_experts_load_offline_and_run(standin_hf_home, name):
    from diffusers import GGUFQuantizationConfig, WanImageToVideoPipeline, WanTransformer3DModel
    from huggingface_hub import hf_hub_download

    entry = registry.get(name)
    reference = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=WAN_REVISION)
    experts = {}
    for role in ("transformer", "transformer_2"):
        path = hf_hub_download(entry.repo_id, entry.roles[role], revision=entry.revision)
        experts[role] = WanTransformer3DModel.from_single_file(
            path, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=registry.WAN_REPO, subfolder=role)
        _assert_gguf_matches(experts[role], getattr(reference, role), _gguf_types(path),
                             standin_gguf.wan_key_to_original)
    pipe = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=WAN_REVISION, **experts)
    with _forward_calls(high=pipe.transformer, low=pipe.transformer_2) as calls:
        frames = _wan_video(pipe)
    assert frames.shape == (1, 9, 64, 64, 3) and np.isfinite(frames).all()
    assert calls == {"high": 2, "low": 2}


@pytest.mark.parametrize("name", ["qwen-edit-gguf-q4", "qwen-edit-gguf-q8"])
def test_qwen_gguf_transformer_loads_offline_and_edits(standin_hf_home, qwen_standin_areas, name):
    from diffusers import GGUFQuantizationConfig, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
    from huggingface_hub import hf_hub_download

    entry = registry.get(name)
    path = hf_hub_download(entry.repo_id, entry.roles["transformer"], revision=entry.revision)
    assert _gguf_field(path, "general.architecture") == "qwen_image"
    types = _gguf_types(path)
    assert "transformer_blocks.0.img_mlp.net.2.weight" in types and "img_in.weight" in types
    assert types[standin_gguf.QWEN_TIMESTEP_MARKER] == "F32"  # the 2511 repacks' marker: loading ignores it
    assert types["img_in.weight"] == types["proj_out.weight"] == types["txt_in.weight"] == "F16"
    types.pop(standin_gguf.QWEN_TIMESTEP_MARKER)
    transformer = QwenImageTransformer2DModel.from_single_file(
        path, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=registry.QWEN_REPO, subfolder="transformer")
    assert transformer.config.zero_cond_t
    reference = QwenImageTransformer2DModel.from_pretrained(registry.QWEN_REPO, subfolder="transformer")
    _assert_gguf_matches(transformer, reference, types)
    pipe = QwenImageEditPlusPipeline.from_pretrained(registry.QWEN_REPO, transformer=transformer)
    images = _qwen_edit(pipe, [_image()])
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


# ---------------------------------------------------------------- the installed cache


def test_offline_mode_is_on_and_the_cache_is_a_temp_folder(offline_hf_home):
    from huggingface_hub import constants, hf_hub_download, is_offline_mode

    assert is_offline_mode() and Path(constants.HF_HUB_CACHE) == offline_hf_home / "hub"
    started = time.perf_counter()
    with pytest.raises(Exception, match="offline|cache"):
        hf_hub_download("nobody/nothing", "config.json")
    assert time.perf_counter() - started < 2, "an offline miss must fail at once, not retry the network"


def test_wan_resolves_offline_by_repo_id(standin_hf_home):
    from diffusers import WanImageToVideoPipeline

    pinned = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=WAN_REVISION)
    by_branch = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO)  # refs/main
    built = standin_models.build_wan_pipeline(seed=0)
    for role in ("transformer", "transformer_2", "text_encoder", "vae"):
        loaded, expected = getattr(pinned, role).state_dict(), getattr(built, role).state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), role
    assert by_branch.config.boundary_ratio == 0.9
    assert _wan_video(pinned, steps=2).shape == (1, 9, 64, 64, 3)


def test_qwen_edit_loads_with_its_processor(standin_hf_home, qwen_standin_areas):
    from diffusers import QwenImageEditPlusPipeline

    pipe = QwenImageEditPlusPipeline.from_pretrained(registry.QWEN_REPO)
    assert type(pipe.processor).__name__ == "Qwen2VLProcessor"
    assert type(pipe.processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    facts = standins.standin_facts(_snapshot_of(registry.get("qwen-edit")))
    assert (facts["qwen_reference_area"], facts["qwen_condition_area"]) == qwen_standin_areas
    assert _qwen_edit(pipe, [_image(), _image()]).shape == (1, 64, 64, 3)


def _snapshot_of(entry) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(entry.repo_id, revision=entry.revision))


def test_controlnet_pipeline_loads_from_the_cache(standin_hf_home):
    from diffusers import QwenImageControlNetModel, QwenImageControlNetPipeline

    controlnet = QwenImageControlNetModel.from_pretrained(registry.get("qwen-controlnet-union").repo_id)
    pipe = QwenImageControlNetPipeline.from_pretrained(registry.get("qwen-image-t2i").repo_id, controlnet=controlnet)
    images = pipe(prompt="a dancer", control_image=_image(), height=64, width=64, num_inference_steps=2,
                  true_cfg_scale=1.0, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_manifest_lists_exactly_the_installed_files(standin_install):
    manifest = standin_install.manifest
    assert set(manifest) == set(standins.default_entry_names())
    by_snapshot: dict[str, set] = {}
    for name, record in manifest.items():
        entry = registry.get(name)
        snapshot = Path(record["snapshot"])
        assert record["repo_id"] == entry.repo_id and record["revision"] == snapshot.name
        assert re.fullmatch(r"[0-9a-f]{40}", record["revision"])
        assert record["revision"] == (entry.revision if entry.pinned else standins.standin_revision(entry))
        assert (snapshot.parents[1] / "refs" / "main").read_text() == record["revision"]
        assert all(f in record["files"] for f in entry.files if "*" not in f)
        assert record["files"] == {f: (snapshot / f).stat().st_size for f in record["files"]}
        assert record["total_bytes"] == sum(record["files"].values()) > 0
        assert standins.standin_facts(snapshot)["repo_id"] == entry.repo_id
        by_snapshot.setdefault(record["snapshot"], set()).update(record["files"])
    for snapshot, listed in by_snapshot.items():
        on_disk = {p.relative_to(snapshot).as_posix() for p in Path(snapshot).rglob("*") if p.is_file()}
        assert on_disk - {standins.MARKER_NAME} == listed, snapshot
    components = manifest["wan-i2v-components"]["files"]
    assert "transformer/config.json" in components
    assert not any(f.startswith("transformer") and f.endswith(".safetensors") for f in components)
    assert any(f.startswith("transformer_2/") and f.endswith(".safetensors") for f in manifest["wan-i2v"]["files"])


def test_gguf_pipeline_from_components_only_then_the_full_repo_on_top(tmp_path, monkeypatch):
    """The small-machine form (components + GGUF experts) has no expert weights; installing the full
    repo afterwards adds them to the same snapshot and keeps the components."""
    from conftest import use_hf_home
    from diffusers import GGUFQuantizationConfig, WanImageToVideoPipeline, WanTransformer3DModel

    use_hf_home(monkeypatch, tmp_path)
    first = standins.install_standins(tmp_path, ["wan-i2v-components", "wan-i2v-gguf-q8"])
    snapshot = Path(first["wan-i2v-components"]["snapshot"])
    assert not list(snapshot.glob("transformer*/*.safetensors"))
    gguf_dir = Path(first["wan-i2v-gguf-q8"]["snapshot"])
    experts = {role: WanTransformer3DModel.from_single_file(
        gguf_dir / relpath, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=registry.WAN_REPO, subfolder=role) for role, relpath in registry.get("wan-i2v-gguf-q8").roles.items()}
    pipe = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=WAN_REVISION, **experts)
    assert _wan_video(pipe, steps=2).shape == (1, 9, 64, 64, 3)

    vae_before = (snapshot / "vae/diffusion_pytorch_model.safetensors").read_bytes()
    second = standins.install_standins(tmp_path, ["wan-i2v"])
    assert set(first["wan-i2v-components"]["files"]) < set(second["wan-i2v"]["files"])
    assert (snapshot / "vae/diffusion_pytorch_model.safetensors").read_bytes() == vae_before
    assert WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=WAN_REVISION).transformer_2 is not None


def test_a_failed_install_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    name = "qwen-controlnet-union"
    snapshot = Path(standins.install_standins(tmp_path, [name])[name]["snapshot"])
    before = {p: p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}

    def crashing_writer(folder, entries, seed):
        (folder / "config.json").write_text("{half a file")
        raise RuntimeError("disk full")

    monkeypatch.setitem(standins._WRITERS, name, crashing_writer)
    with pytest.raises(RuntimeError, match="disk full"):
        standins.install_standins(tmp_path, [name], seed=7)
    assert {p: p.read_bytes() for p in snapshot.rglob("*") if p.is_file()} == before
    assert not list((tmp_path / ".standin-staging").iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        standins.install_standins(tmp_path / "fresh", [name])
    assert not (standins.repo_cache_dir(tmp_path / "fresh" / "hub", registry.get(name).repo_id) / "snapshots").exists()


def test_a_real_download_is_never_overwritten(tmp_path):
    entry = registry.get("qwen-controlnet-union")
    real = standins.repo_cache_dir(tmp_path / "hub", entry.repo_id) / "snapshots" / standins.standin_revision(entry)
    real.mkdir(parents=True)
    (real / "config.json").write_text('{"real": true}')
    with pytest.raises(FileExistsError, match="real download"):
        standins.install_standins(tmp_path, [entry.name])
    assert [p.name for p in real.iterdir()] == ["config.json"]


def test_default_install_skips_annotators_and_entries_without_a_writer(monkeypatch):
    defaults = standins.default_entry_names()
    assert set(defaults) == {e.name for e in registry.entries() if e.name in standins.writers()} - {
        "openpose-annotators"}
    assert "openpose-annotators" in standins.default_entry_names(with_annotators=True)
    assert {"wan-i2v", "wan-i2v-gguf-q4", "qwen-edit-gguf-q8", "qwen-controlnet-union"} <= set(defaults)
    monkeypatch.setattr(standins.standin_loras, "lora_writers", dict)  # as if no LoRA entry had a writer
    assert not {e.name for e in registry.entries("lora")} & set(standins.default_entry_names())
    with pytest.raises(ValueError, match="no stand-in for wan-lightning"):
        standins.install_standins("/nonexistent", ["wan-lightning"])


def test_standin_facts_are_none_for_real_folders(tmp_path):
    assert standins.standin_facts(tmp_path) is None
    (tmp_path / standins.MARKER_NAME).write_text(json.dumps({"standin": True, "qwen_reference_area": 4096}))
    assert standins.standin_facts(tmp_path)["qwen_reference_area"] == 4096


def test_cli_installs_one_entry(tmp_path, capsys):
    assert standins.main(["--hf-home", str(tmp_path), "--only", "qwen-controlnet-union"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert list(manifest) == ["qwen-controlnet-union"]
    assert set(manifest["qwen-controlnet-union"]["files"]) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_openpose_annotators_on_request_load_with_the_real_loader(tmp_path, monkeypatch):
    from conftest import use_hf_home

    use_hf_home(monkeypatch, tmp_path)
    record = standins.install_standins(tmp_path, ["openpose-annotators"])["openpose-annotators"]
    snapshot = Path(record["snapshot"])
    body = torch.load(snapshot / "body_pose_model.pth", weights_only=True)
    assert "conv1_1.weight" in body and body["conv1_1.weight"].shape == (64, 3, 3, 3)
    from controlnet_aux import OpenposeDetector

    detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators")  # torch.load + load_state_dict
    pose = detector(_image(128), detect_resolution=128, image_resolution=128)
    assert pose.size == (128, 128)


@pytest.mark.parametrize("name", ["qwen-edit-gguf-q4", "qwen-edit-gguf-q8"])
def test_the_weight_check_passes_a_qwen_gguf_with_the_timestep_marker(standin_install, name):
    """`__index_timestep_zero__` (Comfy-Org's 2511 repacks) holds no weight: not 'unexpected in the files'."""
    from producer.modelfiles import weightcheck

    path = _snapshot(standin_install, name) / registry.get(name).roles["transformer"]
    assert standin_gguf.QWEN_TIMESTEP_MARKER in _gguf_types(path)
    cov = weightcheck.check_gguf(name, path, _snapshot(standin_install, "qwen-edit") / "transformer")
    assert cov.ok and not cov.unexpected and cov.covered == cov.parameters > 0, cov.describe()
