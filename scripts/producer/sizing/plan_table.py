"""The plan table of docs/memory-plan.md: the plan `memory.plan_memory` makes for each row of VRAM x RAM, for the
two model families' usual workloads (tests/test_memory_plan.py keeps the page equal to it)."""

from __future__ import annotations

from producer.facts.hardware import GiB
from producer.sizing.memory import QWEN_FOOTPRINT, WAN_FOOTPRINT, MemoryPlan, plan_memory, qwen_workload, wan_workload
from producer.sizing.placement import Placement

TABLE_VRAM_GB = (0, 8, 10, 12, 16, 24, 48, 80, 141)
TABLE_RAM_GB = (16, 32, 64, 128)
TABLE_WORKLOADS = {"wan": ("Wan 2.2 I2V, 832x480x81", WAN_FOOTPRINT, wan_workload(832, 480, 81)),
                   "qwen": ("Qwen-Image-Edit-2511, 1024x1024, 1 reference", QWEN_FOOTPRINT,
                            qwen_workload(1024, 1024, 1))}


def plan_table(family: str) -> list[tuple[int, int, MemoryPlan]]:
    from producer.facts.hardware import from_sizes

    _, footprint, work = TABLE_WORKLOADS[family]
    return [(v, r, plan_memory(from_sizes(v, r), footprint, work)) for v in TABLE_VRAM_GB for r in TABLE_RAM_GB]


def plan_table_markdown(family: str) -> str:
    title = TABLE_WORKLOADS[family][0]
    header = ("| VRAM GB | RAM GB | plan | weights | experts in RAM | blocks on GPU | streamed GiB / forward | "
              "text encoder | VAE | peak VRAM GiB | peak RAM GiB | fits |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, r, p in plan_table(family):
        experts = str(p.experts_in_ram) if "transformer_2" in p.components else "-"
        blocks_on_gpu = {Placement.GPU: "all", Placement.GROUP_OFFLOAD: f"{p.resident_blocks} / {p.blocks}"}
        on_gpu = blocks_on_gpu.get(p.placement, "-")
        streamed = f"{p.streamed_bytes / GiB:.1f}" if p.streamed_bytes else "-"
        rows.append(f"| {v} | {r} | {p.name} | {p.weights} | {experts} | {on_gpu} | {streamed} | {p.text_encoder} | "
                    f"{'tiled' if p.vae_tiling else 'whole'} | {p.peak_vram / GiB:.1f} | {p.peak_ram / GiB:.1f} | "
                    f"{'yes' if p.fits else 'no'} |")
    return f"<!-- plan-table:{family} ({title}) -->\n" + "\n".join(rows) + f"\n<!-- /plan-table:{family} -->"


if __name__ == "__main__":  # python -m producer.sizing.plan_table: print the tables for docs/memory-plan.md
    for fam in TABLE_WORKLOADS:
        print(plan_table_markdown(fam), end="\n\n")
