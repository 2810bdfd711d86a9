"""Where a Wan session's experts come from: read from the installed files each time (bf16 or fp8 from the
diffusers repo, or a GGUF file with the repo's config), or handed over already built (the benchmark's
full-size random-weight models, tests); the one-expert pipeline view that LoRA loading works on; and what each
expert ran for a clip (ExpertCounter)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

from producer.engines.wan.wan_load import DENOISERS, WanFiles
from producer.facts import registry
from producer.sizing import gguf_host, memory
from producer.sizing.placement import Placement


class ExpertsOnDisk:
    """Reads an expert from the installed files each time it is needed."""

    keeps_modules = False

    def __init__(self, files: WanFiles, dtype: torch.dtype, device: torch.device, plan: memory.MemoryPlan):
        self.files, self.dtype, self.device, self.plan = files, dtype, device, plan

    def get(self, component: str, on_host: bool = False) -> torch.nn.Module:
        """`on_host`: the expert will live in host memory (streamed or swapped), so a GGUF file is read
        straight into the page-locked chunks that transfers come from (one copy instead of three)."""
        if self.files.gguf:
            return gguf_host.load_gguf(WanTransformer3DModel, self.files.gguf[component], self.files.snapshot,
                                       component, self.dtype, on_host, self._resident(component),
                                       gguf_host.streams_in_place(self.plan, component, self.device))
        kwargs = {}
        straight_to_gpu = self.plan.components[component].placement is Placement.GPU and self.files.weights == "bf16"
        if straight_to_gpu and self.device.type == "cuda":
            kwargs["device_map"] = self.device  # resident weights never pass through host RAM
        return WanTransformer3DModel.from_pretrained(self.files.snapshot, subfolder=component, dtype=self.dtype,
                                                     use_safetensors=True, **kwargs)

    def _resident(self, component: str) -> tuple[str, ...]:
        """Key prefixes of the blocks that placement will keep on the GPU (none off CUDA or unstreamed)."""
        return gguf_host.kept_on_gpu(self.plan, component, registry.WAN_BLOCK_LIST, self.device)


class ExpertsInMemory:
    """Experts handed over already built (the benchmark's full-size random-weight models, tests)."""

    keeps_modules = True

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules

    def get(self, component: str, on_host: bool = False) -> torch.nn.Module:
        return self.modules[component]


def lora_view(component: str, module: torch.nn.Module) -> WanImageToVideoPipeline:
    """A pipeline holding `module` in its slot, for producer.engines.loras.lora, one expert at a time.

    lora.load_loras refuses a pipeline that already holds adapters (unfused LoRAs stay on GGUF experts),
    and diffusers' Wan loader reads `pipe.transformer.config` even when loading into transformer_2; the
    other slot therefore holds a weightless (meta device) model of the same config.
    """
    with torch.device("meta"):
        placeholder = WanTransformer3DModel.from_config(module.config)
    slots = {name: placeholder for name in DENOISERS}
    slots[component] = module
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                                   boundary_ratio=registry.WAN.boundary_ratio, **slots)


@dataclass
class ExpertRun:
    steps: int
    timesteps: list[float]
    forwards: int  # two per step with CFG
    seconds: float  # forward time, synchronised


class ExpertCounter:
    """Forward hooks on an expert: which timesteps it ran and how long its forwards took."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.timesteps: list[float] = []
        self.forwards = 0
        self.seconds = 0.0
        self._start = 0.0

    def attach(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self._before, with_kwargs=True)
        module.register_forward_hook(self._after)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before(self, module, args, kwargs):
        self._sync()
        self._start = time.perf_counter()
        t = kwargs.get("timestep")
        if t is not None:
            self.timesteps.append(round(float(t.flatten()[0]), 3))

    def _after(self, module, args, output):
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.forwards += 1

    def result(self) -> ExpertRun:
        steps = [t for i, t in enumerate(self.timesteps) if i == 0 or t != self.timesteps[i - 1]]
        return ExpertRun(len(steps), steps, self.forwards, round(self.seconds, 3))
