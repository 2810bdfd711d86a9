"""The memory plan as a table: every (VRAM, RAM) row of the grid has its expected plan written down.

docs/memory-plan.md explains each row; the test also checks that the page's tables are the ones the
code produces, so the page cannot drift.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from producer.facts import hardware
from producer.facts.hardware import GiB, from_sizes
from producer.sizing import memory, plan_table

# (VRAM GB, RAM GB) -> "plan weights experts_in_ram fits". Read a row as: on this machine, this is
# how the 832x480x81 clip / the 1024^2 one-reference edit runs.
WAN_EXPECTED = """
0 16 cpu bf16 2 no        | no GPU: 57 GB of bf16 experts do not fit 16 GB
0 32 cpu bf16 2 no
0 64 cpu bf16 2 yes       | fits, but hours per clip: the reason says so
0 128 cpu bf16 2 yes
8 16 group-offload gguf-q4 1 yes   | 16 GB RAM cannot hold both Q4 experts: one is read at its turn
8 32 group-offload gguf-q4 2 yes   | both Q4 experts (19 GB) in RAM, streamed block by block
8 64 group-offload gguf-q4 2 yes     | bf16 streaming reserves ~8.3 GiB (measured): over an 8 GB card
8 128 group-offload gguf-q4 2 yes
10 16 group-offload gguf-q4 1 yes
10 32 group-offload gguf-q4 2 yes
10 64 group-offload bf16 2 yes
10 128 group-offload bf16 2 yes
12 16 group-offload gguf-q4 1 yes
12 32 group-offload gguf-q4 2 yes
12 64 group-offload bf16 2 yes
12 128 group-offload bf16 2 yes
16 16 group-offload gguf-q4 1 yes    | a 9.7 GB Q4 expert plus ~6 GiB of activations is too tight whole
16 32 group-offload gguf-q4 2 yes
16 64 group-offload bf16 2 yes     | quality first: bf16 streamed beats Q4 resident
16 128 group-offload bf16 2 yes
24 16 expert-swap gguf-q4 1 yes      | one Q4 expert on the card at a time
24 32 group-offload gguf-q4 2 yes  | streaming both Q4 experts beats swapping them (measured 1.14x vs 1.36x)
24 64 group-offload bf16 2 yes
24 128 group-offload bf16 2 yes
48 16 resident gguf-q4 2 yes
48 32 resident gguf-q8 2 yes       | Q8 experts (30 GB) fit a 48 GB card
48 64 group-offload bf16 2 yes     | bf16 streamed (1.13x) rather than two 28.6 GB swaps a clip
48 128 group-offload bf16 2 yes
80 16 resident bf16 2 yes          | both bf16 experts load straight onto the card
80 32 resident bf16 2 yes
80 64 resident bf16 2 yes
80 128 resident bf16 2 yes
141 16 resident bf16 2 yes
141 32 resident bf16 2 yes
141 64 resident bf16 2 yes
141 128 resident bf16 2 yes
"""

QWEN_EXPECTED = """
0 16 cpu bf16 1 no
0 32 cpu bf16 1 no
0 64 cpu bf16 1 yes
0 128 cpu bf16 1 yes
8 16 group-offload gguf-q4 1 no    | the 16.6 GB text encoder alone does not fit 16 GB of RAM
8 32 group-offload gguf-q8 1 yes
8 64 group-offload bf16 1 yes
8 128 group-offload bf16 1 yes
10 16 group-offload gguf-q4 1 no
10 32 group-offload gguf-q8 1 yes  | Q8 (21.8 GB) fits 32 GB RAM once the encoder is freed
10 64 group-offload bf16 1 yes
10 128 group-offload bf16 1 yes
12 16 group-offload gguf-q4 1 no
12 32 group-offload gguf-q8 1 yes
12 64 group-offload bf16 1 yes
12 128 group-offload bf16 1 yes
16 16 group-offload gguf-q4 1 no
16 32 group-offload gguf-q8 1 yes
16 64 group-offload bf16 1 yes
16 128 group-offload bf16 1 yes
24 16 resident gguf-q4 1 no
24 32 group-offload gguf-q8 1 yes    | Q8 (21.8 GB) plus ~5 GiB of activations is over a 24 GB card
24 64 group-offload bf16 1 yes
24 128 group-offload bf16 1 yes
48 16 resident bf16 1 yes          | the 41 GB bf16 transformer loads straight onto the card
48 32 resident bf16 1 yes
48 64 resident bf16 1 yes
48 128 resident bf16 1 yes
80 16 resident bf16 1 yes
80 32 resident bf16 1 yes
80 64 resident bf16 1 yes
80 128 resident bf16 1 yes
141 16 resident bf16 1 yes
141 32 resident bf16 1 yes
141 64 resident bf16 1 yes
141 128 resident bf16 1 yes
"""


def _rows(text):
    for line in text.strip().splitlines():
        fields = line.split("|")[0].split()
        vram, ram, name, weights, experts, fits = fields
        yield int(vram), int(ram), name, weights, int(experts), fits == "yes"


@pytest.mark.parametrize("family,expected", [("wan", WAN_EXPECTED), ("qwen", QWEN_EXPECTED)])
def test_plan_table(family, expected):
    table = {(v, r): p for v, r, p in plan_table.plan_table(family)}
    rows = list(_rows(expected))
    assert len(rows) == len(table) == len(plan_table.TABLE_VRAM_GB) * len(plan_table.TABLE_RAM_GB)
    for vram, ram, name, weights, experts, fits in rows:
        plan = table[(vram, ram)]
        got = (plan.name, plan.weights, plan.experts_in_ram, plan.fits)
        assert got == (name, weights, experts, fits), f"{family} {vram} GB VRAM / {ram} GB RAM: {plan.summary()}"


@pytest.mark.parametrize("family", ["wan", "qwen"])
def test_plans_respect_their_budgets(family):
    for vram, ram, plan in plan_table.plan_table(family):
        if plan.fits:
            assert plan.peak_ram <= ram * GiB
            if vram:
                assert plan.peak_vram <= vram * GiB - memory.VRAM_RESERVE
        else:
            assert plan.advice, "a plan that does not fit must say what to change"


def test_ten_gb_card_never_holds_both_wan_experts():
    for ram in plan_table.TABLE_RAM_GB:
        plan = memory.plan_memory(from_sizes(10, ram), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
        assert plan.components["transformer"].placement != "gpu"
        assert plan.components["transformer_2"].placement != "gpu"
        assert plan.peak_vram <= 9.5 * GiB


def test_docs_page_shows_the_tables_the_code_produces():
    page = (Path(__file__).resolve().parents[1] / "docs" / "memory-plan.md").read_text()
    for family in plan_table.TABLE_WORKLOADS:
        assert plan_table.plan_table_markdown(family) in page, (
            f"docs/memory-plan.md is out of date: regenerate with `python -m producer.sizing.memory` (family {family})")


def test_overrides_are_honoured():
    hw = from_sizes(141, 128)
    work = memory.wan_workload(832, 480, 81)
    assert memory.plan_memory(hw, memory.WAN_FOOTPRINT, work, offload="group").name == "group-offload"
    assert memory.plan_memory(hw, memory.WAN_FOOTPRINT, work, offload="sequential").name == "sequential"
    assert memory.plan_memory(hw, memory.WAN_FOOTPRINT, work, weights="gguf-q8").weights == "gguf-q8"
    forced = memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, work, offload="none")
    assert forced.name == "resident" and not forced.fits and "smaller size" in forced.advice


def test_installed_forms_narrow_the_automatic_choice():
    hw, work = from_sizes(10, 128), memory.wan_workload(832, 480, 81)
    plan = memory.plan_memory(hw, memory.WAN_FOOTPRINT, work, installed=frozenset({"gguf-q4"}))
    assert plan.weights == "gguf-q4"


def test_bad_override_names_are_rejected():
    with pytest.raises(ValueError):
        memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81),
                           offload="fast")


def test_larger_clip_needs_more_vram_and_tiles_when_tight():
    small = memory.plan_memory(from_sizes(141, 128), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    large = memory.plan_memory(from_sizes(141, 128), memory.WAN_FOOTPRINT, memory.wan_workload(1280, 720, 81))
    assert large.peak_vram > small.peak_vram
    # A resident plan that leaves no room for an untiled decode must tile the VAE.
    tight = memory.plan_memory(from_sizes(24, 128), memory.WAN_FOOTPRINT, memory.wan_workload(1280, 720, 81),
                               offload="none", weights="gguf-q4")
    assert tight.vae_tiling


def test_cpu_plan_uses_fp32_for_tiny_models():
    tiny = memory.ModelFootprint(
        family="wan", denoisers=("transformer", "transformer_2"), denoiser_params=100_000, denoiser_blocks=2,
        hidden=32, activation_factor=12, text_encoder_params=50_000, vae_params=10_000,
        vae_bytes_per_pixel=100, vae_tiled_bytes=1000)
    plan = memory.plan_memory(from_sizes(0, 16), tiny, memory.wan_workload(64, 64, 9))
    assert (plan.name, plan.dtype, plan.fits) == ("cpu", "float32", True)


def test_next_offload_walks_towards_frugality():
    plan = memory.plan_memory(from_sizes(141, 128), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert memory.next_offload(plan) == "model"
    seq = memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81),
                             offload="sequential")
    assert memory.next_offload(seq) is None


@pytest.mark.parametrize("offload, placement, plan_name, json_name", [
    ("none", "gpu", "resident", "resident"),
    ("model", "model_offload", "model-offload", "expert-swap"),  # two experts swapped: Wan's name for it
    ("group", "group_offload", "group-offload", "group-offload"),
    ("sequential", "sequential", "sequential", "sequential"),
])
def test_one_placement_type_owns_the_three_spellings(offload, placement, plan_name, json_name):
    member = memory.Placement.of_offload(offload)
    assert (member, member.offload, member.plan_name(1), member.plan_name(2)) == (placement, offload, plan_name,
                                                                                 json_name)
    assert memory.Placement.of_plan(json_name) is member is memory.Placement(placement)
    plan = memory.plan_memory(from_sizes(141, 128), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81),
                              offload=offload)
    assert plan.placement is member
    # The JSON carries the same strings as before the type: plain values, never the member's repr.
    out = json.loads(json.dumps(plan.to_dict()))
    assert out["name"] == json_name and out["components"]["transformer"].startswith(f"{placement} (")
    assert out["text_encoder"] == "gpu" and out["components"]["vae"] == "gpu (bf16)"
    assert memory.OFFLOAD_CHOICES == ("auto", "none", "model", "group", "sequential")


def test_cpu_plans_say_cpu_and_have_no_more_frugal_offload():
    plan = memory.plan_memory(from_sizes(0, 128), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert (plan.placement, plan.name, plan.text_encoder, memory.next_offload(plan)) == ("cpu", "cpu", "cpu", None)
    assert memory.Placement.CPU.offload is None and not memory.Placement.CPU.resident


def test_the_plan_line_quoted_in_the_reference_is_what_the_code_prints():
    page = (Path(__file__).resolve().parents[1] / "references" / "memory-and-speed.md").read_text()
    plan = memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert plan.summary() in page, "references/memory-and-speed.md quotes an out-of-date plan line"


@pytest.mark.parametrize("family", ["wan", "qwen"])
def test_resident_blocks_fill_the_card_only_up_to_the_margin(family):
    """Partial residency: group-offload plans keep whole blocks on the card up to RESIDENT_FILL of the budget,
    the predicted peak includes them, and only the other blocks count as streamed."""
    footprint = plan_table.TABLE_WORKLOADS[family][1]
    for vram, ram, plan in plan_table.plan_table(family):
        if plan.name != "group-offload":
            assert plan.resident_blocks == 0
            continue
        budget = vram * GiB - memory.VRAM_RESERVE
        one = int(footprint.denoiser_params * memory.BYTES_PER_PARAM[plan.weights])
        assert plan.streamed_bytes == one - plan.resident_blocks * memory.block_bytes(footprint, plan.weights)
        assert plan.resident_blocks < footprint.denoiser_blocks, "at least one block streams"
        streaming = memory.plan_memory(from_sizes(vram, ram), footprint, plan_table.TABLE_WORKLOADS[family][2],
                                       max_resident_blocks=0)
        assert streaming.resident_blocks == 0 and streaming.streamed_bytes == one
        grown = plan.resident_blocks * len(footprint.denoisers) * memory.block_bytes(footprint, plan.weights)
        assert streaming.peak_vram <= plan.peak_vram <= streaming.peak_vram + grown
        assert plan.peak_vram <= max(memory.RESIDENT_FILL * budget, streaming.peak_vram), (vram, ram)

def test_the_ten_gb_qwen_plan_keeps_six_q8_blocks_on_the_card_and_runs_ahead():
    """Six, not seven: the host running ahead holds one more streamed block (measured: 6 of 60, 7.72 GiB
    reserved, H100, bench/results/2026-12-07-h100-evening)."""
    plan = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, memory.qwen_workload(1024, 1024, 1))
    assert (plan.weights, plan.resident_blocks, plan.blocks, plan.run_ahead) == ("gguf-q8", 6, 60, True)
    assert 7.5 * GiB < plan.peak_vram <= memory.RESIDENT_FILL * (10 * GiB - memory.VRAM_RESERVE)
    assert "6 of 60 blocks resident, host runs ahead" in plan.summary()
    assert plan.to_dict()["streamed_gib_per_forward"] == round(plan.streamed_bytes / GiB, 2)
    capped = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, memory.qwen_workload(1024, 1024, 1),
                                max_resident_blocks=3)
    assert capped.resident_blocks == 3 and capped.peak_vram < plan.peak_vram


def test_wan_experts_share_the_room_for_resident_blocks():
    """Both experts are placed together, so the room left under the margin is split between them."""
    budget, working = 16 * GiB - memory.VRAM_RESERVE, int(7 * GiB)
    room = int(memory.RESIDENT_FILL * budget) - working
    block = memory.block_bytes(memory.WAN_FOOTPRINT, "gguf-q4")
    assert memory.resident_blocks(memory.WAN_FOOTPRINT, "gguf-q4", working, budget) == room // block // 2
    one = replace(memory.WAN_FOOTPRINT, denoisers=("transformer",))
    assert memory.resident_blocks(one, "gguf-q4", working, budget) == room // block
    assert memory.resident_blocks(one, "gguf-q4", working, budget, limit=3) == 3
    assert memory.resident_blocks(one, "gguf-q4", budget, budget) == 0, "no room under the margin"

def test_no_resident_blocks_when_the_streamed_plan_already_fills_the_margin():
    plan = memory.plan_memory(from_sizes(8, 32), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert plan.name == "group-offload" and plan.resident_blocks == 0
    seq = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, memory.qwen_workload(1024, 1024, 1),
                             offload="sequential")
    assert seq.resident_blocks == 0 and seq.streamed_bytes > 0


def test_dequantize_on_arrival_is_asked_for_and_taken_only_where_its_vram_fits():
    work = memory.qwen_workload(1024, 1024, 1)
    plain = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, work)
    asked = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, work, dequantize_on_arrival=True)
    assert not plain.dequantize_on_arrival, "opt-in until measured"
    assert asked.dequantize_on_arrival and "dequantized on arrival" in asked.summary()
    # the bf16 form of the blocks in flight is paid for with resident blocks, never above the margin
    assert asked.resident_blocks < plain.resident_blocks
    assert asked.peak_vram <= memory.RESIDENT_FILL * (10 * GiB - memory.VRAM_RESERVE)
    tight = memory.plan_memory(from_sizes(8, 32), memory.QWEN_FOOTPRINT, work, dequantize_on_arrival=True)
    assert not tight.dequantize_on_arrival and any("on arrival" in n for n in tight.notes)
    bf16 = memory.plan_memory(from_sizes(10, 64), memory.QWEN_FOOTPRINT, work, dequantize_on_arrival=True)
    assert bf16.weights == "bf16" and not bf16.dequantize_on_arrival, "nothing to dequantize"


def test_resident_blocks_leave_alone_what_other_programs_hold_on_the_card():
    """A desktop holding 2 GiB of a 10 GB card: resident blocks fill only the free part."""
    work = memory.qwen_workload(1024, 1024, 1)
    idle = from_sizes(10, 32)
    busy = replace(idle, vram_free=8 * GiB)
    plan = memory.plan_memory(busy, memory.QWEN_FOOTPRINT, work)
    assert 0 < plan.resident_blocks < memory.plan_memory(idle, memory.QWEN_FOOTPRINT, work).resident_blocks
    assert plan.peak_vram <= memory.RESIDENT_FILL * 8 * GiB


def test_an_explicit_group_offload_streams_every_block_and_is_the_first_retry():
    """Out of memory with resident blocks: the next step is --offload group (every block streamed), then
    sequential."""
    work = memory.qwen_workload(1024, 1024, 1)
    auto = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, work)
    assert auto.resident_blocks and memory.next_offload(auto) == "group"
    streamed = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, work, offload="group")
    assert streamed.resident_blocks == 0 and streamed.peak_vram < auto.peak_vram
    assert memory.next_offload(streamed) == "sequential"
    asked = memory.plan_memory(from_sizes(10, 32), memory.QWEN_FOOTPRINT, work, offload="group", max_resident_blocks=2)
    assert asked.resident_blocks == 2


def test_the_benchmark_can_tell_the_scripts_a_smaller_machines_ram(monkeypatch):
    """PRODUCER_RAM_GB: the plan of a machine with that much RAM (host memory itself is not limited)."""
    real = hardware.probe(device="cpu")
    monkeypatch.setenv("PRODUCER_RAM_GB", "2")
    told = hardware.probe(device="cpu")
    assert told.ram_total == min(real.ram_total, 2 * GiB) and told.ram_available <= 2 * GiB
    monkeypatch.setenv("PRODUCER_RAM_GB", "100000")
    assert hardware.probe(device="cpu").ram_total == real.ram_total
    for bad in ("lots", "-4", "nan", "inf"):  # ignored, not a traceback
        monkeypatch.setenv("PRODUCER_RAM_GB", bad)
        assert hardware.probe(device="cpu").ram_total == real.ram_total


def test_one_expert_plans_count_the_clips_waiting_between_their_halves():
    """A one-expert batch keeps up to 8 clips between their halves (engines/wan/halfway.py): the plan's RAM
    counts them, more at 720p than at 480p; plans with both experts in RAM keep none."""
    small, large = memory.wan_workload(832, 480, 81), memory.wan_workload(1280, 720, 81)
    one = [memory.plan_memory(from_sizes(16, 16), memory.WAN_FOOTPRINT, w) for w in (small, large)]
    assert [p.experts_in_ram for p in one] == [1, 1]
    waiting = memory.CLIPS_PER_EXPERT_READ * memory.HALFWAY_BYTES_PER_TOKEN * (large.tokens - small.tokens)
    assert one[1].peak_ram - one[0].peak_ram == waiting
    both = [memory.plan_memory(from_sizes(16, 32), memory.WAN_FOOTPRINT, w, max_resident_blocks=0)
            for w in (small, large)]
    assert both[0].experts_in_ram == 2 and both[0].peak_ram == both[1].peak_ram


def test_blocks_kept_on_the_card_leave_host_ram_once_placed():
    """Each expert is placed as soon as it is read (its resident blocks then leave host RAM), so the peak
    holds every expert's streamed blocks and the last one's resident blocks, read but not yet placed."""
    work = memory.wan_workload(832, 480, 81)
    kept = memory.plan_memory(from_sizes(24, 32), memory.WAN_FOOTPRINT, work)
    streaming = memory.plan_memory(from_sizes(24, 32), memory.WAN_FOOTPRINT, work, max_resident_blocks=0)
    assert kept.experts_in_ram == streaming.experts_in_ram == 2 and kept.resident_blocks > 20
    resident = kept.resident_blocks * memory.block_bytes(memory.WAN_FOOTPRINT, kept.weights)
    assert streaming.peak_ram - kept.peak_ram == resident  # the first expert's: the second holds its own until placed
    alone = memory.plan_memory(from_sizes(16, 16), memory.WAN_FOOTPRINT, work)  # one expert: read whole
    assert alone.experts_in_ram == 1 and alone.resident_blocks > 0
    assert alone.peak_ram == memory.plan_memory(from_sizes(16, 16), memory.WAN_FOOTPRINT, work,
                                                max_resident_blocks=0).peak_ram


@pytest.mark.parametrize("family", ["wan", "qwen"])
def test_the_peaks_of_generating_alone_are_within_the_plans_peaks(family):
    """A run that bypasses the text encoder (the benchmark's) is compared with the plan's peaks of generating:
    on a 12 GB card the Wan text encoder on the GPU is the VRAM peak, on 16 GB of RAM Qwen's streamed text
    encoder is the RAM peak."""
    for _, _, plan in plan_table.plan_table(family):
        assert plan.generating_vram <= plan.peak_vram and plan.generating_ram <= plan.peak_ram
    work = plan_table.TABLE_WORKLOADS[family][2]
    footprint = plan_table.TABLE_WORKLOADS[family][1]
    text = int(footprint.text_encoder_params * memory.BYTES_PER_PARAM["bf16"])
    if family == "wan":
        plan = memory.plan_memory(from_sizes(12, 32), footprint, work)
        assert plan.text_encoder is memory.Placement.GPU
        assert plan.peak_vram == text + memory.TEXT_ENCODER_ACTIVATIONS > plan.generating_vram
        assert plan.generating_ram == plan.peak_ram
    else:
        plan = memory.plan_memory(from_sizes(8, 16), footprint, work)
        assert plan.text_encoder is memory.Placement.GROUP_OFFLOAD
        assert plan.peak_ram == text + memory.RAM_RESERVE > plan.generating_ram
    assert plan.to_dict()["generating_gib"]["vram"] == round(plan.generating_vram / GiB, 2)


def test_the_lora_factors_that_gguf_weights_keep_are_counted():
    """A LoRA cannot be fused into GGUF weights (producer.sizing.folded_lora keeps its factors beside them, in
    bf16): the plan counts them in each expert's bytes; bf16 weights fuse it and hold nothing more."""
    _, footprint, work = plan_table.TABLE_WORKLOADS["wan"]
    lora = replace(footprint, adapter_params=311_246_848)  # LightX2V's rank-64 Wan 2.2 distill LoRA, one expert
    machine = from_sizes(10, 32)
    without, with_lora = memory.plan_memory(machine, footprint, work), memory.plan_memory(machine, lora, work)
    assert with_lora.weights == without.weights == "gguf-q4" and with_lora.experts_in_ram == 2
    # both experts in RAM, less the share of the blocks kept on the card
    assert with_lora.generating_ram - without.generating_ram == pytest.approx(2 * 2 * 311_246_848, rel=0.05)
    assert with_lora.generating_vram > without.generating_vram
    big = from_sizes(80, 128)
    assert memory.plan_memory(big, lora, work).weights == "bf16"
    assert memory.plan_memory(big, lora, work).peak_ram == memory.plan_memory(big, footprint, work).peak_ram


def test_a_lora_set_counts_its_pairs_per_expert(tmp_path):
    """lora_files.adapter_params: the down and up matrices read from the files' headers, summed per expert, the
    largest expert taken; a file that cannot be read counts nothing (loading then names the problem)."""
    import torch
    from producer.engines.loras import lora_files
    from safetensors.torch import save_file

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"blocks.0.q.lora_down.weight": torch.zeros(4, 32), "blocks.0.q.lora_up.weight": torch.zeros(32, 4),
               "blocks.0.q.alpha": torch.tensor(4.0), "blocks.0.q.diff_b": torch.zeros(32)}, a)
    save_file({"x.lora_A.weight": torch.zeros(2, 16), "x.lora_B.weight": torch.zeros(16, 2)}, b)
    spec = lora_files.LoraSpec
    assert lora_files.pair_params(a) == 256 and lora_files.pair_params(b) == 64
    assert lora_files.adapter_params([spec(a, 1.0, ("transformer", "transformer_2")),
                                      spec(b, 1.0, ("transformer_2",))]) == 320
    assert lora_files.adapter_params([spec(tmp_path / "missing.safetensors")]) == 0
    assert lora_files.adapter_params([]) == 0
