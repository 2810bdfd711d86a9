"""One Wan clip over several GPUs: diffusers' context parallelism (Ulysses attention), launched by torchrun.

`wan_video.py --context-parallel N` launches N processes (producer.runs.parallel). Every rank runs the same
script with the same arguments (the coordinator fixes the seed, so every rank draws the same noise) and
the same session; each expert, once loaded, given its LoRAs and placed, gets diffusers'
`enable_parallelism(ContextParallelConfig(ulysses_degree=N))` on one shared device mesh. The Wan
transformer's `_cp_plan` then splits the video tokens over the ranks after the patch embedding (the rotary
embeddings with them); attention trades tokens for heads with an all-to-all (each rank attends over the
whole sequence for 40/N heads) and back; the output projection gathers the sequence. Every rank so ends
each step with the same full latents and runs the same scheduler step. Text encoding and the VAE decode
are not split (each rank does its own; they are a small part of a clip). Rank 0 writes the clip; the
other ranks write theirs into the run folder, which the coordinator deletes.

Not here, and why:
- ring attention: diffusers 0.42.1 needs an attention kernel that returns the log-sum-exp for it (cuDNN,
  flash-attn, sage: CUDA only); PyTorch's SDPA, the one kernel a CPU has, refuses `return_lse`, so it could
  not be tested. Ulysses covers Wan's 40 heads on 2, 4, 5 and 8 GPUs.
- CFG-parallel (the two guidance passes on two groups of ranks): diffusers 0.42.1 has none (its parallel
  config lists it as to do) and its Wan pipeline makes the conditional and unconditional passes as two
  separate calls, so it would take a rewritten denoising loop. With CFG on (the full 40-step schedule)
  both passes are split over all N GPUs instead; the distilled 4-step schedule has no CFG.
- offloading: context parallelism splits activations, not weights; every rank holds both experts, and a
  plan that streams them block by block is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from producer.engines.wan.wan import ClipJob, WanSession
from producer.errors import CliError, ExitCode
from producer.facts.registry import WAN_DENOISERS
from producer.sizing.memory import MemoryPlan

log = logging.getLogger("producer")

VAE_SPATIAL, VAE_TEMPORAL = 8, 4  # Wan 2.2 VAE: 8x smaller in space, 4x in time (+ the first frame)
PATCH = (1, 2, 2)  # the experts' patch size (frames, height, width): Wan 2.2 A14B and its stand-in alike


@dataclass
class Joined:
    rank: int
    world: int
    device: str  # this rank's device: cuda:LOCAL_RANK, or cpu

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join(args: argparse.Namespace, run_dir: Path) -> Joined:
    """Join the ranks, pin this rank's device, and give ranks other than 0 an output of their own in the run
    folder (only rank 0 writes the user's clip)."""
    if not args.debug:  # diffusers 0.42.1 calls a deprecated PyTorch collective on every step: not the user's concern
        warnings.filterwarnings("ignore", message=".*all_gather_tensor.* is deprecated", category=FutureWarning)
    joined = init_ranks(args.device)
    args.device = joined.device
    if joined.rank != 0 and args.output is not None:
        own = run_dir / f"rank{joined.rank}"
        own.mkdir(parents=True, exist_ok=True)
        args.output = own / Path(args.output).name
    return joined


def init_ranks(device: str | None) -> Joined:
    """Join torchrun's ranks in the default process group: NCCL on GPUs (this rank on cuda:LOCAL_RANK), gloo on
    the CPU (`device` "cpu")."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cpu":
        dist.init_process_group("gloo")
        return Joined(rank, world, "cpu")
    if not torch.cuda.is_available():
        raise CliError("--context-parallel needs CUDA GPUs and none is available",
                       "run on one GPU, or on a machine with several (--device cpu runs it on CPU processes, slowly)",
                       ExitCode.FAILED)
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    return Joined(rank, world, f"cuda:{local}")


def tokens(job: ClipJob, patch: tuple[int, int, int]) -> int:
    """The video tokens one expert attends over: latent frames x latent height x latent width / patch."""
    frames = (job.frames - 1) // VAE_TEMPORAL + 1
    return (frames // patch[0]) * (job.height // VAE_SPATIAL // patch[1]) * (job.width // VAE_SPATIAL // patch[2])


def refuse_streamed_experts(plan: MemoryPlan) -> None:
    """Each rank must hold the expert it runs (on its GPU, or brought in whole): a streamed one cannot be split."""
    streamed = {c: p.placement for c, p in plan.components.items() if c in WAN_DENOISERS and p.placement.streams}
    if streamed:
        raise CliError(f"--context-parallel needs each GPU to hold the experts, but plan {plan.name} "
                       f"streams them ({', '.join(f'{c}: {p}' for c, p in streamed.items())})",
                       "run the clip on one GPU (or a --batch, one clip per GPU), or use GPUs with more memory",
                       ExitCode.OUT_OF_MEMORY, memory_plan=plan.to_dict())


class ContextParallelWanSession(WanSession):
    """WanSession whose experts run split over the ranks of the default process group (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_streamed_experts(self.plan)
        from torch.distributed.device_mesh import init_device_mesh

        self.degree = dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (1, self.degree), mesh_dim_names=("ring", "ulysses"))

    def generate(self, job: ClipJob):
        count = tokens(job, PATCH)
        if count % self.degree:
            raise CliError(f"{job.width}x{job.height}x{job.frames} is {count} video tokens, which {self.degree} "
                           "GPUs cannot split evenly", f"use --context-parallel {_divisors(count)} or another size")
        log.info("context parallel: %d video tokens, %d per rank, Ulysses attention over %d ranks", count,
                 count // self.degree, self.degree)
        return super().generate(job)

    def _bring_in(self, component: str) -> None:
        super()._bring_in(component)  # loaded, LoRAs fused, fp8 cast, placed, speed levers applied
        module = getattr(self.pipe, component)
        if module is not None and getattr(module, "_parallel_config", None) is None:
            enable(module, self.degree, self.mesh)
            log.info("context parallel: %s split over %d ranks", component, self.degree)


def enable(module: torch.nn.Module, degree: int, mesh) -> None:
    from diffusers import ContextParallelConfig

    heads = module.config.num_attention_heads
    if heads % degree:
        raise CliError(f"--context-parallel {degree}: the model's {heads} attention heads cannot be split over "
                       f"{degree} GPUs", f"use --context-parallel {_divisors(heads)}")
    config = ContextParallelConfig(ulysses_degree=degree, mesh=mesh)
    if mesh.device_type == "cpu":
        # diffusers 0.42.1 places rank r on device r % torch.accelerator.device_count(): 0 without an
        # accelerator, a division by zero. On the CPU (gloo: tests) every rank's device is the one CPU.
        with _one_accelerator():
            module.enable_parallelism(config=config)
    else:
        module.enable_parallelism(config=config)


class _one_accelerator:
    def __enter__(self):
        self.saved = torch.accelerator.device_count
        torch.accelerator.device_count = lambda: 1

    def __exit__(self, *exc):
        torch.accelerator.device_count = self.saved


def _divisors(n: int) -> str:
    return " or ".join(str(d) for d in range(2, 9) if n % d == 0) or "1 (one GPU)"
