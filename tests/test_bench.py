"""The benchmark runs at tiny size on a CPU, through the same code as on a GPU, so it cannot rot."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "benchmark.py"


def completed(out: Path) -> dict:
    """A benchmark script's --out once it ran to its end: complete, and no temp file left beside it (the file is
    rewritten after every form: tests/test_bench_partial_results.py)."""
    result = json.loads(out.read_text())
    assert result["complete"] is True and [p.name for p in out.parent.iterdir()] == [out.name]
    return result


def test_tiny_benchmark_runs_plain_and_the_plans_side_by_side(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--size", "tiny", "--device", "cpu", "--repeats", "1",
                           # each configuration is a child process (~10 s of imports here): the fewest that cover it
                           "--run", "wan-480p-4:plain,plan10x32", "--run", "qwen-1ref-40:plan10x32", "--run", "wan-encode:plan10x32",
                           "--measure-steps", "2", "--out", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {(r["workload"], r["config"]): r for r in json.loads(out.read_text())["runs"]}
    wan = runs[("wan-480p-4", "plan10x32")]  # through the scripts' session: 2 of the 4 steps measured, 1 per expert
    assert wan["experts"]["transformer"]["steps"] == 1 and wan["experts"]["transformer_2"]["steps"] == 1
    assert wan["plan"].startswith("plan cpu") and wan["seconds"]["total"] > 0
    qwen = runs[("qwen-1ref-40", "plan10x32")]
    assert qwen["steps"] == 40 and qwen["measured_steps"] == 2, "long schedules are measured short and scaled"
    for workload, form, types in (("wan-480p-4", "gguf-q4", {"Q4_K", "Q6_K"}), ("qwen-1ref-40", "gguf-q8", {"Q8_0"})):
        planned = runs[(workload, "plan10x32")]  # the 10 GB / 32 GB plan streams GGUF: built and run in that form
        assert planned["weights"] == form and set(planned["gguf_block_bytes"]) == types
        assert planned["machine_gb"] == {"vram": 10, "ram": 32} and planned["predicted_ram_gib"] <= 32
        # no text encoder runs here: compared with the plan's peaks of generating, the whole peaks beside them
        assert planned["predicted_ram_gib"] <= planned["plan_peak_gib"]["ram"]
        assert planned["predicted_ram_process_gib"] == round(planned["predicted_ram_gib"] - 4, 2)  # no OS reserve
        assert planned["predicted_vram_gib"] <= planned["plan_peak_gib"]["vram"]
    encode = runs[("wan-encode", "plan10x32")]
    assert encode["text_encoder"] == "group_offload" and encode["seconds"]["encode"] > 0  # UMT5 streams on 10 GB
    assert encode["predicted_ram_gib"] == encode["plan_peak_gib"]["ram"]  # the encoding is a stage of the whole
    table = md.read_text()
    assert "### wan-480p-4" in table and "vs plain" in table and "scaled to 40" in table
    assert f"({planned['predicted_ram_process_gib']} in the process, {planned['predicted_ram_gib']}; " in table


def test_numerical_probe_reports_zero_for_the_same_numbers_and_the_size_of_a_change():
    sys.path[:0] = [str(BENCH.parent), str(BENCH.parents[1] / "scripts")]
    import children
    import fullsize
    import torch

    parts = fullsize.wan_components("tiny", "cpu", torch.float32)
    embeds = fullsize.wan_prompt_embeds("tiny", "cpu", torch.float32)
    first = children._wan_probe(parts["transformer"], embeds, 64, 64, 9)
    same = fullsize.numerical_difference(children._wan_probe(parts["transformer"], embeds, 64, 64, 9), first)
    assert same == {"relative_l2": 0.0, "max_abs": 0.0, "cosine": 1.0}
    changed = fullsize.numerical_difference(first * 1.01, first)
    assert abs(changed["relative_l2"] - 0.01) < 1e-4 and changed["cosine"] > 0.9999


def test_writing_benchmark_times_every_stage_after_generation(tmp_path):
    out = tmp_path / "w.json"
    proc = subprocess.run([sys.executable, str(BENCH.parent / "writing.py"), "--width", "64", "--height", "48",
                           "--frames", "9", "--image-size", "64", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads(out.read_text())["median_seconds"]
    assert set(stages["clip"]) == {"continuity", "color_match_if_applied", "review_files", "mp4_and_recipe",
                                   "mp4_if_noise", "every_clip"}
    paid = stages["clip"]["continuity"] + stages["clip"]["review_files"] + stages["clip"]["mp4_and_recipe"]
    assert stages["clip"]["every_clip"] == pytest.approx(paid, abs=2e-3)  # noise and colour match are extras
    assert stages["clip"]["every_clip"] > 0 and stages["image"]["png"] > 0


def test_gguf_experts_have_the_published_type_maps_and_sane_weights():
    sys.path[:0] = [str(BENCH.parent), str(BENCH.parents[1] / "scripts")]
    import fullsize
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    parts = fullsize.wan_components("tiny", "cpu", torch.float32, wide=True)
    expert, sizes = fullsize.quantize_like_gguf(parts["transformer"], "gguf-q4", torch.float32)
    block = expert.blocks[0]
    types = {name: m.weight.quant_type.name for name, m in block.named_modules() if isinstance(m, GGUFLinear)}
    assert {n for n, t in types.items() if t == "Q6_K"} == {"attn1.to_v", "attn2.to_v", "ffn.net.2"}
    assert set(types.values()) == {"Q4_K", "Q6_K"} and len(types) == 10  # 8 attention + 2 FFN matrices
    assert not isinstance(expert.proj_out, GGUFLinear), "the head stays unquantized, as in the files"
    for name in ("attn1.to_q", "ffn.net.2"):
        weight = dequantize_gguf_tensor(block.get_submodule(name).weight).float()
        assert weight.isfinite().all() and 0.01 < weight.std() < 0.04, (name, weight.std())
    with torch.no_grad():
        out = expert(hidden_states=torch.randn(1, 36, 3, 8, 8), timestep=torch.tensor([500.0]),
                     encoder_hidden_states=torch.randn(1, 8, 32), return_dict=False)[0]
    assert out.isfinite().all()
    q8 = fullsize.quantize_like_gguf(fullsize.wan_components("tiny", "cpu", torch.float32, wide=True)["transformer"],
                                     "gguf-q8", torch.float32)[1]
    assert set(q8) == {"Q8_0"} and sum(q8.values()) > sum(sizes.values()), "Q8_0 takes more bytes than Q4_K_M"


def test_from_disk_runs_load_gguf_files_and_the_distill_lora_through_the_scripts_loader_and_time_it(tmp_path):
    """One benchmark run over files written once (each configuration is a child process, and writing the tiny
    files takes a process of its own): the load from GGUF files timed by stage, and `-lora`, the step-distill LoRA
    (real layout and rank, written beside the GGUF files) loaded by the scripts and folded into the GGUF experts,
    against `-lorapeft`, the same left as peft adapters (as before folding)."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--size", "tiny", "--device", "cpu", "--repeats", "1",
                           "--from-disk", str(tmp_path / "models"),
                           "--run", "wan-480p-4:plan10x32,plan10x32-lora,plan10x32-lorapeft",
                           "--run", "qwen-1ref-4:plan10x32-lora", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, check=False,
                          env=dict(os.environ, BENCH_PROFILE_LOAD=str(tmp_path / "load.prof.txt")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {(r["workload"], r["config"]): r for r in json.loads(out.read_text())["runs"]}
    _check_the_load_from_disk(runs[("wan-480p-4", "plan10x32")], tmp_path)
    both = ("transformer", "transformer_2")
    assert runs[("wan-480p-4", "plan10x32-lora")]["lora"] == {"rank": 64, "fused": dict.fromkeys(both, False),
                                                              "folded": dict.fromkeys(both, True)}
    assert runs[("wan-480p-4", "plan10x32-lorapeft")]["lora"]["folded"] == dict.fromkeys(both, False)
    assert runs[("qwen-1ref-4", "plan10x32-lora")]["lora"]["folded"] == {"transformer": True}
    assert not runs[("qwen-1ref-4", "plan10x32-lora")]["plan_dequantize_on_arrival"]
    assert runs[("wan-480p-4", "plan10x32-lora")]["weights"] == "gguf-q4"
    assert sorted(p.name for p in (tmp_path / "models").glob("*lora*")) == [
        "qwen-tiny-wide-lora-r64.safetensors", "wan-tiny-wide-lora-r64.safetensors"]


def _check_the_load_from_disk(run: dict, tmp_path: Path) -> None:
    # The load's seconds by stage: the file's read into host chunks is part of load_gguf; what the stages do
    # not name is in the profile.
    stages = run["load_stages_s"]
    assert 0 < stages["read"] <= stages["gguf_load"] and stages["place"] > 0 and stages["build"] >= 0
    assert stages["gguf_load"] + stages["place"] + stages["other"] == pytest.approx(run["load_to_first_step_s"],
                                                                                     abs=0.01)
    profiles = (tmp_path / "load.prof.txt").read_text()
    assert "read_into_host_chunks" in profiles and profiles.count("function calls") == 3  # each Wan load's own
    files = sorted(p.name for p in (tmp_path / "models").glob("wan-*.gguf"))  # beside them: Qwen's, for its LoRA run
    assert files == ["wan-tiny-gguf-q4-transformer.gguf", "wan-tiny-gguf-q4-transformer_2.gguf"]
    assert run["disk_read"]["bytes"] == sum(p.stat().st_size for p in (tmp_path / "models").glob("wan-*.gguf"))
    assert run["load_to_first_step_s"] > 0 and run["load_floor_s"] > 0 and run["weights"] == "gguf-q4"
    assert run["experts"]["transformer"]["steps"] == 2 and run["experts"]["transformer_2"]["steps"] == 2
    # Host memory by kind: what must fit (anonymous + shared) apart from mapped file pages (page cache).
    assert 0 < run["peak_ram_anon_gib"] <= run["peak_rss_sampled_gib"] and run["file_pages_at_anon_peak_gib"] >= 0
    # ... and by stage: where the peak was reached (the experts' reading and use are marked by the session).
    stages = run["peak_ram_anon_by_stage_gib"]
    assert {"load", "denoise transformer", "denoise transformer_2", "decode"} <= set(stages)
    assert max(stages.values()) == run["peak_ram_anon_gib"]


def test_a_clips_reads_of_its_experts_are_timed_by_stage_only_with_one_expert_in_ram(tmp_path):
    """The 16 GB rows read each expert at its turn inside every clip (11.9 s of a 30 s clip on the H200): the
    benchmark times those reads by load stage, per clip, where a plan holds one expert in RAM."""
    from types import SimpleNamespace

    sys.path[:0] = [str(BENCH.parent), str(BENCH.parents[1] / "scripts")]
    import disk_session
    import torch
    from producer.sizing import gguf_host, offload

    def read_twice():
        for _ in range(2):
            with pytest.raises(FileNotFoundError):
                gguf_host.read_into_host_chunks(tmp_path / "missing.gguf")

    with disk_session.reads_in_clips("cpu", SimpleNamespace(experts_in_ram=2), True) as reads:
        read_twice()
    assert reads == {}
    with disk_session.reads_in_clips("cpu", SimpleNamespace(experts_in_ram=1), False) as reads:
        read_twice()
    assert reads == {}  # not read from disk: nothing to time
    with disk_session.reads_in_clips("cpu", SimpleNamespace(experts_in_ram=1), True) as reads:
        read_twice()
    assert set(reads) == {"read"} and reads["read"] > 0
    stages = {"read": 0.4, "gguf_load": 1.0, "place": 0.2, "release": 0.4}
    clip = disk_session.per_clip(stages, {"load_experts": 0.9, "expert_swap": 0.6}, 2)
    assert clip == {"read": 0.2, "gguf_load": 0.5, "place": 0.1, "release": 0.2, "build": 0.3, "other": 0.7}
    with disk_session.reads_in_clips("cpu", SimpleNamespace(experts_in_ram=1), True) as reads:
        offload.release(SimpleNamespace(vae=torch.nn.Linear(2, 2)), "vae")  # the expert let go before a read
    assert reads["release"] > 0


def test_plan_configs_carry_the_plans_resident_blocks_and_streamall_turns_them_off():
    sys.path[:0] = [str(BENCH.parent), str(BENCH.parents[1] / "scripts")]
    import benchmark
    import children

    assert benchmark.plan_machine("plan10x32-streamall") == (10, 32) == benchmark.plan_machine("plan10x32")
    assert benchmark.cap_gib("plan10x32-streamall") == 10
    assert children._machine_plan("qwen", "plan10x32").resident_blocks == 6  # the full-size plan on that machine
    assert children._machine_plan("qwen", "plan10x32-streamall").resident_blocks == 0
    assert children._machine_plan("qwen", "plan10x32-dequant").dequantize_on_arrival
    assert not children._machine_plan("qwen", "plan10x32").dequantize_on_arrival
    assert children._machine_plan("qwen", "plan10x32").run_ahead
    assert children._machine_plan("qwen", "plan10x32").weights == "gguf-q8"  # the form that machine gets
    q4 = children._machine_plan("qwen", "plan10x32-q4")
    assert q4.weights == "gguf-q4" and q4.resident_blocks > 7  # half the bytes a block: more of them stay


def test_plan_rows_run_what_the_scripts_choose_and_compdq_compiles_the_dequantization():
    """A plan row runs the plan as the scripts do (diffusers' dequantization: the compiled one measured no faster);
    `-compdq` is the same plan with it compiled, for the ratio in one run."""
    sys.path[:0] = [str(BENCH.parent), str(BENCH.parents[1] / "scripts")]
    import benchmark
    import children
    from producer.sizing.placement import Placement

    streamed = Placement.GROUP_OFFLOAD
    assert not children._speed("plan10x32", "cuda", streamed).compile_dequantize
    assert children._speed("plan10x32-compdq", "cuda", streamed).compile_dequantize
    assert not children._speed("plan10x32-compdq", "cpu", streamed).compile_dequantize
    assert children._machine_plan("wan", "plan10x32-compdq") == children._machine_plan("wan", "plan10x32")
    assert benchmark.plan_machine("plan10x16-compdq") == (10, 16)


@pytest.mark.skipif(not any(__import__("shutil").which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_dequantization_benchmark_times_eager_and_compiled_on_the_same_bytes(tmp_path):
    out = tmp_path / "dq.json"
    proc = subprocess.run([sys.executable, str(BENCH.parent / "dequant.py"), "--size", "tiny", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = completed(out)["rows"]
    assert [r["type"] for r in rows] == ["Q8_0", "Q4_K", "Q6_K"]
    assert all(r["same_bits"] and r["eager_ms"] > 0 and r["compiled_ms"] > 0 and r["matmul_ms"] > 0 for r in rows)
    # the whole layer three ways; the one compiled whole computes what diffusers' layer does, to bf16 rounding
    assert all(r["eager_linear_ms"] > 0 and r["compiled_linear_ms"] > 0 and r["fused_linear_ms"] > 0 for r in rows)
    assert all(0 <= r["fused_vs_eager"] < 0.02 for r in rows)
    assert rows[0]["split_linear_ms"] > 0 and 0 <= rows[0]["split_vs_eager"] < 0.02  # Q8_0 split once


@pytest.mark.parametrize("family, gguf", [("wan", "gguf-q4"), ("qwen", "gguf-q8")])
def test_forward_profile_times_each_form_and_says_how_busy_the_device_was(tmp_path, family, gguf):
    out = tmp_path / "f.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("forward_profile.py")), "--family", family, "--size",
                           "tiny", "--device", "cpu", "--repeats", "1", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = completed(out)["rows"]
    assert set(rows) == {"bf16", gguf, f"{gguf}+lora", f"{gguf}+lorapeft", f"{gguf}+lora@streamed",
                         f"{gguf}+lora@arrival", f"{gguf}+lora@runahead"}
    for row in rows.values():
        assert row["forward_s"] > 0 and row["kernel_s"] > 0 and 0 < row["busy"] and row["top"][0]["calls"] >= 1
    assert rows[f"{gguf}+lorapeft"]["launches"] > rows[f"{gguf}+lora"]["launches"]  # peft's own ops on each layer
    # The streamed forms compute what the form held on the card computes (its output is kept when it comes first).
    for way in ("streamed", "arrival", "runahead"):
        assert rows[f"{gguf}+lora@{way}"]["vs_held"]["relative_l2"] < 1e-5


def test_disk_read_times_each_way_of_reading_a_file_whole(tmp_path):
    model = tmp_path / "expert.gguf"
    model.write_bytes(bytes(range(256)) * 200_000)  # 51 MB: several pieces of each way
    out = tmp_path / "disk.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("disk_read.py")), str(model), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ways = json.loads(out.read_text())["ways"]
    assert set(ways) == {"serial", "threads-4", "threads-8", "threads-16", "mmap-copy"}
    assert all(w["bytes"] == model.stat().st_size and w["gb_per_s"] > 0 for w in ways.values())
    missing = subprocess.run([sys.executable, str(BENCH.with_name("disk_read.py")), str(tmp_path / "none.gguf")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_expert_read_times_each_way_of_making_host_tensors_from_a_gguf_file(wan_q4, tmp_path):
    path, _ = wan_q4
    out = tmp_path / "read.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("expert_read.py")), str(path), "--ways",
                           "mmap-copy,pread-1,pread-2", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["ways"]) == {"mmap-copy", "pread-1", "pread-2"}
    sizes = {r["bytes"] for way in result["ways"].values() for r in way.values()}
    assert all(set(way) == {"fresh", "reused"} for way in result["ways"].values())
    assert len(sizes) == 1 and sizes.pop() > 0.9 * path.stat().st_size  # each way read the file's tensors
    missing = subprocess.run([sys.executable, str(BENCH.with_name("expert_read.py")), str(tmp_path / "none.gguf")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_lora_runs_plan_counts_the_full_size_loras_factors():
    """A `-lora` run's plan is the full-size model's, whatever the run's size: it counts the full-size LoRA's
    factors, from the configuration alone (no file, no order between loading the LoRA and planning), and a plan
    lever may come before the LoRA."""
    sys.path.insert(0, str(BENCH.parent))
    import children
    import loras

    assert loras.plan_params("wan", "plan10x32") == 0
    both = children._machine_plan("qwen", "plan10x32-dequant-lora")  # a plan lever, then the LoRA
    assert both.dequantize_on_arrival and both.summary() != children._machine_plan("qwen", "plan10x32-dequant").summary()
    wan = loras.plan_params("wan", "plan10x32-lora")
    assert wan == loras.plan_params("wan", "plan12x32-dequant-lorapeft") == 311_246_848  # 0.58 GiB in bf16
    assert 400e6 < loras.plan_params("qwen", "plan10x32-lora") < 450e6  # the 850 MB file's factors


def test_pinning_times_the_scripts_host_packer_per_allocator_setting(tmp_path):
    """Off CUDA only plain memory runs (each way in its own process); a way that cannot run here is refused."""
    out = tmp_path / "pinning.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("pinning.py")), "--gib", "0.25", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ways = json.loads(out.read_text())["ways"]
    assert set(ways) == {"plain"} and ways["plain"]["bytes"] >= 0.2 * 2**30 and not ways["plain"]["pinned"]
    assert ways["plain"]["overlapped_s"] > 0 and ways["plain"]["overlapped_gb_per_s"] > 0
    refused = subprocess.run([sys.executable, str(BENCH.with_name("pinning.py")), "--ways", "host-alloc"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "use plain" in refused.stderr


def test_pinning_register_later_locks_each_filled_chunk_in_place_and_unlocks_it(monkeypatch):
    """The CUDA-only way, with CUDA's calls recorded: every chunk is locked where it lies (its own pointer and
    size), once per thread count and once more beside the Python loop, and unlocked after each round."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    import pinning

    calls = []

    class Cudart:
        def cudaHostRegister(self, ptr, size, flags):
            calls.append(("lock", ptr, size))
            time.sleep(0.02)  # as the real call, it takes a while and lets go of the GIL: the loop beside it runs
            return 0

        def cudaHostUnregister(self, ptr):
            calls.append(("unlock", ptr))
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", lambda: Cudart())
    out = pinning.register_later(0.5)
    assert out["bytes"] == 2 << 28 and out["fill_s"] > 0 and out["register_s_1"] > 0 and out["register_s_4"] > 0
    assert out["python_rate_while_registering"] > 0 and out["unregister_s_1"] >= 0 and out["unregister_s_4"] >= 0
    locked = [c for c in calls if c[0] == "lock"]
    assert len(locked) == 6 and {c[2] for c in locked} == {1 << 28}  # 2 chunks x 3 rounds, whole chunks
    assert sorted(c[1] for c in calls if c[0] == "unlock") == sorted(c[1] for c in locked)


def test_lora_load_times_the_scripts_loader_on_a_gguf_expert_and_refuses_a_folder_without_scripts(tmp_path):
    out = tmp_path / "lora.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("lora_load.py")), "--size", "tiny", "--blocks", "2",
                           "--repeats", "2", "--folder", str(tmp_path / "files"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["load_loras_s"]) == 2 and result["median_s"] > 0 and result["blocks"] == 2
    assert len(result["refold_s"]) == 2 and result["refold_median_s"] > 0  # folded again without peft
    assert len(result["stored_s"]) == 2 and result["stored_median_s"] > 0  # a later run: from the store of folds
    assert (tmp_path / "files" / "wan-tiny-2" / "expert.gguf").is_file()
    refused = subprocess.run([sys.executable, str(BENCH.with_name("lora_load.py")), "--scripts", str(tmp_path)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "no producer package" in refused.stderr


def test_vae_speed_times_encode_and_decode_in_each_form_against_bf16(tmp_path):
    """Compiling is left out here (two minutes of CPU compilation at tiny size); it runs on the GPU machine."""
    out = tmp_path / "vae.json"
    proc = subprocess.run([sys.executable, str(BENCH.with_name("vae_speed.py")), "--size", "tiny", "--device", "cpu",
                           "--repeats", "1", "--forms", "bf16,channels-last,tiled", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = completed(out)["rows"]
    assert list(rows) == ["bf16", "channels-last", "tiled"]
    for row in rows.values():
        assert row["encode_s"] > 0 and row["decode_s"] > 0 and row["decode_first_s"] > 0
    for form in ("channels-last", "tiled"):  # a layout or a tiling: the same video
        assert rows[form]["vs_bf16"]["relative_l2"] < 1e-4
    refused = subprocess.run([sys.executable, str(BENCH.with_name("vae_speed.py")), "--size", "tiny", "--forms",
                              "bf16,fp4"], capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2 and "unknown form(s) fp4" in refused.stderr


def test_the_vae_in_channels_last_has_its_3d_convolutions_so_and_nothing_else_changed():
    import torch

    sys.path.insert(0, str(BENCH.parent))
    import vae_speed

    plain = vae_speed.build_vae("tiny", "cpu", torch.float32, "bf16")
    last = vae_speed.build_vae("tiny", "cpu", torch.float32, "channels-last")
    convs = [m for m in last.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last_3d)  # (1x1x1 kernels are both)
                   for c in plain.modules() if isinstance(c, torch.nn.Conv3d))
    theirs = plain.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in last.state_dict().items())


def test_the_numerical_difference_of_a_clip_sized_output_keeps_its_cosine_within_one():
    """Float32 sums over ~10^8 values gave a cosine of 1.01-1.02 (an H100's VAE run); float64 ones do not."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    import fullsize

    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(32_000_000, generator=gen) * 2 - 1
    changed = reference + 0.03 * torch.randn(32_000_000, generator=gen)
    diff = fullsize.numerical_difference(changed.bfloat16(), reference.bfloat16())
    assert 0.99 < diff["cosine"] <= 1.0 and 0.02 < diff["relative_l2"] < 0.07


def test_the_host_runs_ahead_in_the_plans_unless_the_configuration_says_waitblocks():
    sys.path.insert(0, str(BENCH.parent))
    import children

    assert children._machine_plan("qwen", "plan10x32").run_ahead
    assert not children._machine_plan("qwen", "plan10x32-waitblocks").run_ahead
