"""The one place that knows every model the skill uses.

Every other module reads repo ids, revisions, file lists, sizes and sampling
defaults from here. Sizes are bytes on disk of the files we fetch (public file
pages and download scripts, 2026-11/12; approximate where marked).

Revisions: a commit of the repository's main branch that another project pins publicly (never a
branch name, never a pull-request ref's commit: tests/test_registry.py enforces both). Where no
public source gives a commit, `revision` is None: `setup_diffusers.py --download` then takes main
as the Hub serves it, records the commit it got (install record, refs/main), later downloads of the
same repository stay at that recorded commit, and `--check` compares the files against that record.
`file_sizes` and `sha256` hold per-file facts a public source gives (an LFS page, a download script
that quotes it); `--download` refuses a file the Hub serves with another size or hash, and `--check`
reports an installed file that differs from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Wan's two denoisers as the pipeline names them: the high-noise expert, then the low-noise one (diffusers'
# WanImageToVideoPipeline `transformer` / `transformer_2`). Qwen has one, `transformer`. The one list of them.
WAN_DENOISERS = ("transformer", "transformer_2")


GB = 1_000_000_000


@dataclass(frozen=True)
class WanSampling:
    """How a Wan 2.2 I2V clip is sampled (one schedule: full or step-distilled)."""

    steps: int
    guidance: float  # high-noise expert
    guidance_2: float  # low-noise expert
    shift: float
    scheduler: str  # "unipc" (official) or "euler" (what the distill LoRAs were trained with)


# Every sampling value below names its public source; docs/real-models.md holds the same facts as a table,
# each row with the test that pins it.
@dataclass(frozen=True)
class WanVideoFacts:
    # Wan-AI/Wan2.2 `wan/configs/wan_i2v_A14B.py`: `boundary = 0.900`; the diffusers repo's model_index.json
    # says boundary_ratio 0.9 (high-noise expert for t >= 900, low-noise below).
    boundary_ratio: float = 0.9
    fps: int = 16  # Wan2.2 `wan/configs/shared_config.py`: sample_fps 16
    frames: int = 81  # Wan2.2 `shared_config.py`: frame_num 81 (about 5 s); 4n + 1 (the VAE packs 4 frames a latent)
    frame_multiple: int = 4  # Wan2.2 `wan_i2v_A14B.py`: vae_stride (4, 8, 8)
    size_multiple: int = 16  # VAE 8x spatial x patch_size (1, 2, 2)
    # Presets (width, height) for landscape; portrait swaps them, square uses the smaller side.
    # Wan-AI/Wan2.2-I2V-A14B card: 480P and 720P; diffusers' Wan I2V example sizes to 480 x 832 pixels.
    presets: dict = field(default_factory=lambda: {"480p": (832, 480), "720p": (1280, 720)})
    # Wan2.2 `wan_i2v_A14B.py`: sample_steps 40, sample_shift 5.0, sample_guide_scale (3.5, 3.5); the official
    # sampler is flow-matching UniPC (`wan/image2video.py`, sample_solver 'unipc'). The diffusers repo's
    # scheduler config says flow_shift 3.0: the session sets 5 (wan.make_scheduler), as the reference code does.
    full: WanSampling = WanSampling(steps=40, guidance=3.5, guidance_2=3.5, shift=5.0, scheduler="unipc")
    # LightX2V `configs/wan22/wan_moe_i2v_distill.json` and `examples/wan/wan_i2v_distilled.py`: infer_steps 4,
    # denoising_step_list [1000, 750, 500, 250], sample_shift 5.0, enable_cfg false (guidance 1),
    # boundary_step_index 2 (two steps an expert); lightx2v/Wan2.2-Lightning card: 4 steps, no CFG, Euler.
    distilled: WanSampling = WanSampling(steps=4, guidance=1.0, guidance_2=1.0, shift=5.0, scheduler="euler")


@dataclass(frozen=True)
class QwenSampling:
    steps: int
    cfg: float  # true_cfg_scale; the pipeline runs CFG only with a negative prompt
    # "model": the repo's own scheduler config as it is (Qwen-Image-Edit-2511: exponential dynamic shift
    # 0.5..0.9, terminal stretch to 0.02); "lightning": that config with QWEN_LIGHTNING_SCHEDULER on top.
    scheduler: str = "model"


# ModelTC/Qwen-Image-Lightning `generate_with_diffusers.py` (commit 342260e8, lines 82-97; quoted in
# nunchaku-tech/nunchaku `examples/v1/qwen-image-lightning.py`): "We use shift=3 in distillation". A fixed
# shift of 3 (mu = log 3 whatever the size) and no terminal stretch: 4 steps sample at sigmas
# [1, 0.9, 0.75, 0.5]. The 2511 repo's own scheduler would give about [1, 0.767, 0.456, 0.02] at 1024^2.
QWEN_LIGHTNING_SCHEDULER = {
    "base_shift": math.log(3),
    "max_shift": math.log(3),
    "shift_terminal": None,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
}


@dataclass(frozen=True)
class QwenImageFacts:
    # Qwen/Qwen-Image-Edit-2509 card (2511 builds on it): multi-image editing, best with 1 to 3 input images.
    max_references: int = 3
    size_multiple: int = 16  # the pipeline floors sizes to vae_scale_factor * 2 (diffusers QwenImageEditPlusPipeline)
    default_size: tuple = (1024, 1024)  # diffusers' Qwen pipelines: default_sample_size 128 x vae_scale_factor 8
    # Qwen/Qwen-Image-Edit-2511 model card example: num_inference_steps 40, true_cfg_scale 4.0,
    # negative_prompt " " (guidance_scale 1.0, which the non-distilled transformer ignores).
    full: QwenSampling = QwenSampling(steps=40, cfg=4.0)
    # lightx2v/Qwen-Image-Edit-2511-Lightning card and ModelTC/Qwen-Image-Lightning README: 4 or 8 steps,
    # true_cfg_scale 1.0, with the scheduler above.
    lightning_4: QwenSampling = QwenSampling(steps=4, cfg=1.0, scheduler="lightning")
    lightning_8: QwenSampling = QwenSampling(steps=8, cfg=1.0, scheduler="lightning")


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable thing: a pipeline repo, a set of expert files, a LoRA, an annotator."""

    name: str  # registry key used on the command line (`--only NAME`)
    title: str
    kind: str  # pipeline | components | gguf | lora | controlnet | annotator | embedder
    repo_id: str
    revision: str | None  # a 40-hex commit of main; None: no public commit found (see the module docstring)
    files: tuple[str, ...]  # allow-patterns, relative to the repo root
    size_bytes: int  # on disk, for the files above
    loader: str  # how the scripts load it
    license: str
    gated: bool = False
    required: bool = False  # part of `setup_diffusers.py --download` on machines that use this form
    notes: str = ""
    # LoRA facts
    targets: tuple[str, ...] = ()  # transformer / transformer_2 for Wan LoRAs
    strength: float = 1.0  # default strength in a loader that honours the stored alpha
    rank: int | None = None
    # Files by role, when an entry holds several (e.g. a GGUF high/low pair, a LoRA high/low pair)
    roles: dict = field(default_factory=dict)
    approximate_size: bool = True
    # Per-file facts from public sources (path -> bytes, path -> sha256 hex), checked at download and --check.
    file_sizes: dict = field(default_factory=dict)
    sha256: dict = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return self.revision is not None and len(self.revision) == 40 and all(
            c in "0123456789abcdef" for c in self.revision)

    def published(self, path: str) -> dict:
        """What a public source says about one file: {"size": ..., "sha256": ...} (either may be absent)."""
        facts = {}
        if path in self.file_sizes:
            facts["size"] = self.file_sizes[path]
        if path in self.sha256:
            facts["sha256"] = self.sha256[path]
        return facts


WAN_REPO = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
WAN_COMMIT = "596658fd9ca6b7b71d5057529bbf319ecbc61d74"
QWEN_REPO = "Qwen/Qwen-Image-Edit-2511"
QWEN_COMMIT = "6f3ccc0b56e431dc6a0c2b2039706d7d26f22cb9"
NO_PUBLIC_COMMIT = None  # no public source pins a commit of this repository (see the module docstring)
WAN_SMALL_COMPONENTS = (
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/*",
    "vae/*",
    "transformer/config.json",
    "transformer_2/config.json",
)

_ENTRIES = [
    ModelEntry(
        name="wan-i2v",
        title="Wan 2.2 I2V A14B (diffusers, two fp32 experts)",
        kind="pipeline",
        repo_id=WAN_REPO,
        # main's commit pinned publicly by other projects (2ec9bda..., seen elsewhere, is refs/pr/1's commit).
        revision=WAN_COMMIT,
        files=("*.json", "*.txt", "*.model", "scheduler/*", "tokenizer/*", "text_encoder/*", "vae/*",
               "transformer/*", "transformer_2/*"),
        size_bytes=126_204_155_463,  # the whole repository at WAN_COMMIT (50 files); the README etc. are tiny
        loader="WanImageToVideoPipeline.from_pretrained(dtype=bfloat16)",
        license="apache-2.0",
        required=True,
        notes="High-noise expert `transformer`, low-noise `transformer_2`, boundary_ratio 0.9. The experts are "
        "stored in fp32 (~57 GB each); they load as bf16.",
    ),
    ModelEntry(
        name="wan-i2v-components",
        title="Wan 2.2 I2V A14B small components (text encoder, VAE, tokenizer, configs)",
        kind="components",
        repo_id=WAN_REPO,
        revision=WAN_COMMIT,
        files=WAN_SMALL_COMPONENTS,
        size_bytes=12 * GB,
        loader="WanImageToVideoPipeline.from_pretrained(transformer=<gguf>, transformer_2=<gguf>)",
        license="apache-2.0",
        required=True,
        notes="Everything but the experts: used with the GGUF experts on machines with little RAM.",
    ),
    ModelEntry(
        name="wan-i2v-gguf-q4",
        title="Wan 2.2 I2V A14B experts, GGUF Q4_K_M (high + low noise)",
        kind="gguf",
        repo_id="QuantStack/Wan2.2-I2V-A14B-GGUF",
        revision=NO_PUBLIC_COMMIT,
        files=("HighNoise/Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf", "LowNoise/Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf"),
        size_bytes=19_300_000_000,  # 9.65 GB each (file pages); bullerwins' Q4_K_M experts: 9,651,728,896 B each
        loader="WanTransformer3DModel.from_single_file(GGUFQuantizationConfig, config=wan-i2v-components)",
        license="apache-2.0",
        required=True,
        roles={"transformer": "HighNoise/Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf",
               "transformer_2": "LowNoise/Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf"},
        notes="9.65 GB each; original Wan key names (ComfyUI-GGUF format).",
    ),
    ModelEntry(
        name="wan-i2v-gguf-q8",
        title="Wan 2.2 I2V A14B experts, GGUF Q8_0 (high + low noise)",
        kind="gguf",
        repo_id="QuantStack/Wan2.2-I2V-A14B-GGUF",
        revision=NO_PUBLIC_COMMIT,
        files=("HighNoise/Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf", "LowNoise/Wan2.2-I2V-A14B-LowNoise-Q8_0.gguf"),
        size_bytes=30_820_000_000,  # about 15.41 GB an expert (file pages)
        loader="WanTransformer3DModel.from_single_file(GGUFQuantizationConfig, config=wan-i2v-components)",
        license="apache-2.0",
        required=True,
        roles={"transformer": "HighNoise/Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf",
               "transformer_2": "LowNoise/Wan2.2-I2V-A14B-LowNoise-Q8_0.gguf"},
        notes="~15.4 GB each; near-bf16 quality.",
    ),
    ModelEntry(
        name="wan-lightning",
        title="Wan 2.2 Lightning I2V A14B 4-step LoRAs (high + low noise)",
        kind="lora",
        repo_id="lightx2v/Wan2.2-Distill-Loras",
        # A public project's evidence notes cite the model card at this revision (its I2V rank-64 pair);
        # the file list at this commit was not seen: were the 1022 files absent, --download says so.
        revision="570044187a5219776ef30a5c60c6f76428a3a10a",
        files=("wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
               "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"),
        size_bytes=1_374_000_000,  # 635 MB (high) + 739 MB (low), file pages
        loader="pipe.load_lora_weights (high -> transformer, low -> transformer_2)",
        license="apache-2.0",
        required=True,
        targets=WAN_DENOISERS,
        strength=1.0,
        rank=64,
        roles={"transformer": "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
               "transformer_2": "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"},
        # The LFS sha256 of the low-noise file, quoted from its file page in a public download script
        # (ucn2081's ComfyUI setup script, `# SHA256:` above its wget line); none seen for the high-noise one.
        sha256={"wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors":
                "8833bd4fd7c8eabebf0bc8ee5cfaf47f4f310ce116928a02c1adf8941dd4b0f1"},
        notes="4 steps (2 + 2), CFG 1, shift 5, Euler. Carries non-LoRA `.diff_m` keys, applied as weight deltas.",
    ),
    ModelEntry(
        name="wan21-lightx2v",
        title="LightX2V Wan 2.1 I2V 14B 480P step+CFG distill LoRA (rank 64)",
        kind="lora",
        repo_id="lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v",
        revision=NO_PUBLIC_COMMIT,
        files=("loras/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors",),
        size_bytes=739_000_000,  # about 739 MB = 705 MiB (705 was the MiB figure taken for MB)
        loader="pipe.load_lora_weights into both experts",
        license="apache-2.0",
        targets=WAN_DENOISERS,
        strength=1.0,
        rank=64,
        roles={"transformer": "loras/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors",
               "transformer_2": "loras/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"},
        notes="The LoRA the original skill named; an alternative to wan-lightning, applied to both experts. Its "
        "Wan 2.1 image-encoder keys (k_img, v_img, img_emb) have no target in Wan 2.2 and are reported as such.",
    ),
    ModelEntry(
        name="qwen-edit",
        title="Qwen-Image-Edit-2511 (diffusers, bf16)",
        kind="pipeline",
        repo_id=QWEN_REPO,
        revision=QWEN_COMMIT,
        files=("*.json", "scheduler/*", "tokenizer/*", "processor/*", "text_encoder/*", "vae/*", "transformer/*"),
        size_bytes=57_700_000_000,
        loader="QwenImageEditPlusPipeline.from_pretrained(dtype=bfloat16)",
        license="apache-2.0",
        required=True,
        notes="Transformer 40.9 GB (zero_cond_t), Qwen2.5-VL-7B text encoder 16.6 GB.",
    ),
    ModelEntry(
        name="qwen-edit-components",
        title="Qwen-Image-Edit-2511 small components (text encoder, VAE, tokenizer, processor, configs)",
        kind="components",
        repo_id=QWEN_REPO,
        revision=QWEN_COMMIT,
        files=("model_index.json", "scheduler/*", "tokenizer/*", "processor/*", "text_encoder/*", "vae/*",
               "transformer/config.json"),
        size_bytes=16_900_000_000,
        loader="QwenImageEditPlusPipeline.from_pretrained(transformer=<gguf>)",
        license="apache-2.0",
        required=True,
        notes="Everything but the transformer: used with the GGUF transformer on machines with little RAM.",
    ),
    ModelEntry(
        name="qwen-edit-gguf-q4",
        title="Qwen-Image-Edit-2511 transformer, GGUF Q4_K_M",
        kind="gguf",
        repo_id="unsloth/Qwen-Image-Edit-2511-GGUF",
        revision="0d33d9692b4b26212297240d87b0d4719aa4fd06",
        files=("qwen-image-edit-2511-Q4_K_M.gguf",),
        size_bytes=13_244_758_624,
        approximate_size=False,
        file_sizes={"qwen-image-edit-2511-Q4_K_M.gguf": 13_244_758_624},
        loader="QwenImageTransformer2DModel.from_single_file(GGUFQuantizationConfig, config=qwen-edit-components)",
        license="apache-2.0",
        required=True,
        roles={"transformer": "qwen-image-edit-2511-Q4_K_M.gguf"},
    ),
    ModelEntry(
        name="qwen-edit-gguf-q8",
        title="Qwen-Image-Edit-2511 transformer, GGUF Q8_0",
        kind="gguf",
        repo_id="unsloth/Qwen-Image-Edit-2511-GGUF",
        revision="0d33d9692b4b26212297240d87b0d4719aa4fd06",
        files=("qwen-image-edit-2511-Q8_0.gguf",),
        size_bytes=21_761_817_184,
        approximate_size=False,
        file_sizes={"qwen-image-edit-2511-Q8_0.gguf": 21_761_817_184},
        loader="QwenImageTransformer2DModel.from_single_file(GGUFQuantizationConfig, config=qwen-edit-components)",
        license="apache-2.0",
        required=True,
        roles={"transformer": "qwen-image-edit-2511-Q8_0.gguf"},
    ),
    ModelEntry(
        name="qwen-lightning",
        title="Qwen-Image-Edit-2511 Lightning LoRAs (4-step and 8-step, bf16)",
        kind="lora",
        repo_id="lightx2v/Qwen-Image-Edit-2511-Lightning",
        revision="d74eba145674fd7e31b949324e148e21e7118abd",
        files=("Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors",
               "Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors"),
        size_bytes=1_699_216_592,  # the 4-step file's exact size twice (the 8-step one is ~850 MB)
        file_sizes={"Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors": 849_608_296},
        loader="pipe.load_lora_weights into transformer",
        license="apache-2.0",
        required=True,
        targets=("transformer",),
        strength=1.0,
        roles={"4": "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors",
               "8": "Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors"},
        notes="4 or 8 steps with true CFG off (cfg 1). Use a bf16 or GGUF base: an fp8 base plus this LoRA is "
        "reported to give line artifacts.",
    ),
    ModelEntry(
        name="qwen-anypose",
        title="AnyPose LoRA for Qwen-Image-Edit-2511 (base + helper)",
        kind="lora",
        repo_id="lilylilith/AnyPose",
        revision="27c4b1f7688940d39767e652fe8d87faf44a0881",
        files=("2511-AnyPose-base-000006250.safetensors", "2511-AnyPose-helper-00006000.safetensors"),
        size_bytes=590_292_424,  # 295,146,208 + 295,146,216 B (which is which was not recorded)
        loader="pipe.load_lora_weights into transformer (both files)",
        license="apache-2.0",
        targets=("transformer",),
        strength=0.7,
        roles={"base": "2511-AnyPose-base-000006250.safetensors",
               "helper": "2511-AnyPose-helper-00006000.safetensors"},
        notes="Pose transfer: character image + pose reference image; both files at 0.7 with the 4-step Lightning "
        "LoRA. Weak on 2D art. License inferred from the model card family; check the card.",
    ),
    ModelEntry(
        name="qwen-image-t2i",
        title="Qwen-Image (text-to-image base for the ControlNet Union pose path)",
        kind="pipeline",
        repo_id="Qwen/Qwen-Image",
        # main's commit as huggingface.co/api/models/Qwen/Qwen-Image reported it to a public project's
        # "Immutable model revisions" table (a TRELLIS Colab recipe's README).
        revision="75e0b4be04f60ec59a75f475837eced720f823b6",
        files=("*.json", "scheduler/*", "tokenizer/*", "text_encoder/*", "vae/*", "transformer/*"),
        size_bytes=57_700_000_000,
        loader="QwenImageControlNetPipeline.from_pretrained(controlnet=...)",
        license="apache-2.0",
        notes="Only for the optional pose-guided text-to-image path: the ControlNet Union works with this model, "
        "not with the Edit model.",
    ),
    ModelEntry(
        name="qwen-controlnet-union",
        title="InstantX Qwen-Image ControlNet Union (canny, soft edge, depth, pose)",
        kind="controlnet",
        repo_id="InstantX/Qwen-Image-ControlNet-Union",
        revision=NO_PUBLIC_COMMIT,
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        size_bytes=3_540_000_000,
        loader="QwenImageControlNetModel.from_pretrained",
        license="apache-2.0",
        notes="Loads onto Qwen/Qwen-Image (qwen-image-t2i), never onto the Edit model.",
    ),
    ModelEntry(
        name="openpose-annotators",
        title="OpenPose annotator weights (body, hand, face)",
        kind="annotator",
        repo_id="lllyasviel/Annotators",
        # The repository's head (last change 2023-08-27), as a public model survey records it; ComfyUI
        # docs pin an older commit, 5bc80eec2b4fddbb743c1e9329e3bd94b2cae14d.
        revision="982e7edaec38759d914a963c48c4726685de7d96",
        files=("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
        # The LFS sha256 of each file, as a public project recorded them after checking the repository's.
        sha256={"body_pose_model.pth": "25a948c16078b0f08e236bda51a385d855ef4c153598947c28c0d47ed94bb746",
                "hand_pose_model.pth": "b76b00d1750901abd07b9f9d8c98cc3385b8fe834a26d4b4f0aad439e75fc600",
                "facenet.pth": "8beb52e548624ffcc4aed12af7aee7dcbfaeea420c75609fee999fe7add79d43"},
        size_bytes=510_000_000,
        loader="controlnet_aux OpenposeDetector (pickles, loaded with torch.load(weights_only=True))",
        license="apache-2.0",
        roles={"body": "body_pose_model.pth", "hand": "hand_pose_model.pth", "face": "facenet.pth"},
        notes="Only needed to turn a photo or figure into a pose skeleton; skeleton PNGs and keypoint JSON need no "
        "weights.",
    ),
    ModelEntry(
        name="dinov2-small",
        title="DINOv2 small (image embeddings: does a frame show the character of its asset)",
        kind="embedder",
        repo_id="facebook/dinov2-small",
        # main as a public project's model lock pins it (repo_id, revision and commit_hash recorded together).
        revision="ed25f3a31f01632728cabb09d1542f84ab7b0056",
        files=("config.json", "model.safetensors", "preprocessor_config.json"),
        size_bytes=88_300_000,  # 22 M parameters in float32, plus two small JSON files
        loader="transformers Dinov2Model + AutoImageProcessor (producer.workflow.identity)",
        license="apache-2.0",
        notes="Optional: the identity figures of production.py status (keyframes and clip frames against their "
        "character and object assets); without it those figures are skipped and said to be.",
    ),
]

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}
WAN = WanVideoFacts()
QWEN = QwenImageFacts()

# Component sizes in bf16 bytes, for the memory plan (parameter counts from the public configs).
WAN_EXPERT_PARAMS = 14_290_000_000
WAN_EXPERT_LAYERS = 40
WAN_TEXT_ENCODER_PARAMS = 5_700_000_000
WAN_VAE_PARAMS = 127_000_000
QWEN_TRANSFORMER_PARAMS = 20_430_000_000
QWEN_TRANSFORMER_LAYERS = 60
QWEN_TEXT_ENCODER_PARAMS = 8_300_000_000
QWEN_VAE_PARAMS = 127_000_000
# The denoisers' block lists: the attribute in diffusers and the key prefix in the published GGUF files
# (Wan's keep the original names, whose block prefix is the same; Qwen-Image's use diffusers' names).
WAN_BLOCK_LIST = "blocks"
QWEN_BLOCK_LIST = "transformer_blocks"


class UnknownModel(KeyError):
    pass


def get(name: str) -> ModelEntry:
    """Return the registry entry `name`; an unknown name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model '{name}'; known: {', '.join(sorted(REGISTRY))}") from None


def entries(kind: str | None = None) -> list[ModelEntry]:
    return [e for e in _ENTRIES if kind is None or e.kind == kind]
