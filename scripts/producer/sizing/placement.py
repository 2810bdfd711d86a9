"""Where a component's weights live while it runs: one type for one idea, spelled three ways.

Each `Placement` member is the per-component placement of the memory plan (its value, `group_offload`) and
carries the two other spellings of the same choice: the `--offload` value a user types (`group`) and the
plan's name as printed and in JSON (`group-offload`). Code compares against the members; the strings
appear here only, so nothing translates one spelling into another elsewhere.

"Resident" means one thing throughout: the weights stay on the GPU for the whole run (placement `gpu`, the
plan named `resident`, the resident blocks a group-offload plan keeps on the card). A `model_offload` component
is not resident: it is on the GPU whole only while it runs (`runs_whole_on_gpu`).
"""

from __future__ import annotations

from enum import StrEnum

AUTO = "auto"  # --offload auto: the plan chooses
EXPERT_SWAP = "expert-swap"  # the plan name of model offload when two denoisers (Wan's experts) take turns


class Placement(StrEnum):
    """Listed from the fastest to the most frugal (the order an out-of-memory retry walks); `cpu` is apart."""

    GPU = "gpu", "none", "resident"
    MODEL_OFFLOAD = "model_offload", "model", "model-offload"  # moved to the GPU whole while it runs
    GROUP_OFFLOAD = "group_offload", "group", "group-offload"  # block by block, prefetched on a CUDA stream
    SEQUENTIAL = "sequential", "sequential", "sequential"  # layer by layer, no prefetch: the last resort
    CPU = "cpu", None, "cpu"  # no GPU: runs on the CPU (no --offload value chooses it)

    def __new__(cls, value: str, offload: str | None, plan: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.offload = offload  # the --offload value that asks for it
        member.plan = plan  # the plan's name when the denoisers are placed so
        return member

    @property
    def resident(self) -> bool:
        """The weights stay on the GPU for the whole run (see the module doc)."""
        return self is Placement.GPU

    @property
    def runs_whole_on_gpu(self) -> bool:
        """The whole component is on the GPU while it runs: resident, or brought in whole for its turn."""
        return self in (Placement.GPU, Placement.MODEL_OFFLOAD)

    @property
    def streams(self) -> bool:
        """The weights cross the host link piece by piece at every forward."""
        return self in (Placement.GROUP_OFFLOAD, Placement.SEQUENTIAL)

    def plan_name(self, denoisers: int) -> str:
        """The plan's name with the denoisers placed so: model offload of two experts is an expert swap."""
        return EXPERT_SWAP if self is Placement.MODEL_OFFLOAD and denoisers > 1 else self.plan

    @classmethod
    def of_offload(cls, value: str) -> Placement:
        """The placement an --offload value (not `auto`) asks for."""
        for member in cls:
            if member.offload == value:
                return member
        raise ValueError(f"offload must be one of {OFFLOAD_CHOICES}, not {value!r}")

    @classmethod
    def of_plan(cls, name: str) -> Placement:
        """The placement of the denoisers in a plan of this name (as printed and in the JSON)."""
        if name == EXPERT_SWAP:
            return cls.MODEL_OFFLOAD
        for member in cls:
            if member.plan == name:
                return member
        raise ValueError(f"no plan is named {name!r}")


FRUGALITY = tuple(p for p in Placement if p.offload)  # the placements an --offload value asks for, fastest first
OFFLOAD_CHOICES = (AUTO, *(p.offload for p in FRUGALITY))  # auto, none, model, group, sequential
