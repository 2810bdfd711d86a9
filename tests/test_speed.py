"""Speed levers: the default rule follows the measurements; levers reach the sessions; bad backends are refused."""

import pytest
from producer import cli
from producer.sizing import speed


@pytest.mark.parametrize("device,placement,choice,items,family,expected", [
    ("cuda", "gpu", "auto", 8, "wan", True),          # a long resident run earns back the compile
    ("cuda", "gpu", "auto", 7, "wan", False),         # below the measured break-even
    ("cuda", "group_offload", "auto", 50, "wan", False),  # offload hooks move weights between calls
    ("cuda", "gpu", "auto", 32, "qwen", True),        # Qwen's measured break-even is ~32 images
    ("cuda", "gpu", "auto", 31, "qwen", False),
    ("cpu", "cpu", "auto", 50, "wan", False),
    ("cpu", "cpu", "on", 1, "qwen", True),            # asked for: always
    ("cuda", "gpu", "off", 100, "wan", False),
    ("cuda", "group_offload", "on", 1, "wan", False),  # dynamo cannot trace the offload hooks' transfers
])
def test_compile_default_rule(device, placement, choice, items, family, expected):
    assert speed.default_speed(device, placement, choice, items=items, family=family).compile is expected


@pytest.mark.parametrize("device,capability,placement,message", [
    ("cpu", None, "cpu", "needs an NVIDIA GPU"),
    ("cuda", (8, 6), "gpu", "has no fp8 tensor cores"),           # an RTX 30xx
    ("cuda", (9, 0), "group_offload", "needs the weights resident"),
])
def test_fp8_matmul_is_refused_where_it_cannot_run(device, capability, placement, message):
    with pytest.raises(cli.CliError, match=message) as info:
        speed.check_fp8_matmul(True, device, placement, capability)
    assert "--fp8-matmul" in info.value.fix
    speed.check_fp8_matmul(False, device, placement, capability)  # not asked for: nothing to check


def test_fp8_matmul_needs_torchao(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)  # an import of it fails
    with pytest.raises(cli.CliError, match="needs torchao"):
        speed.check_fp8_matmul(True, "cuda:0", "gpu", (9, 0))


def test_scripts_refuse_fp8_matmul_on_this_cpu_machine(standin_hf_home, tmp_path, capsys):
    import json

    from producer.makers import qwen_image

    out = tmp_path / "a.png"
    code = qwen_image.main(["--prompt", "a lighthouse", "--output", str(out), "--fp8-matmul", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code != 0 and "--fp8-matmul" in report["error"] and not out.exists()


def test_unknown_attention_backend_is_a_clean_error():
    speed.check_attention_backend(None)
    speed.check_attention_backend("native")
    with pytest.raises(cli.CliError, match="not a diffusers attention backend") as info:
        speed.check_attention_backend("warp-speed")
    assert "_native_cudnn" in info.value.fix


def test_an_attention_backend_whose_package_is_missing_is_refused_before_loading(standin_hf_home, tmp_path, capsys):
    """Found by the deep fuzzing: --attention flash without flash-attn crashed after the model loaded (diffusers
    checks the package in set_attention_backend); the same check now runs with the arguments."""
    import json

    from diffusers.models import attention_dispatch
    from producer.makers import qwen_image

    if attention_dispatch._CAN_USE_FLASH_ATTN:
        pytest.skip("flash-attn is installed here")
    out = tmp_path / "a.png"
    code = qwen_image.main(["--prompt", "a fox", "--size", "64x64", "--steps", "2", "--lightning", "off",
                            "--attention", "flash", "-o", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and "flash-attn" in report["error"] and "--attention" in report["fix"] and not out.exists()


def test_levers_apply_to_a_transformer(tiny_wan_pipeline):
    import torch

    expert = tiny_wan_pipeline.transformer
    x = {"hidden_states": torch.randn(1, 36, 3, 8, 8), "timestep": torch.tensor([500]),
         "encoder_hidden_states": torch.randn(1, 8, 32), "return_dict": False}
    with torch.no_grad():
        before = expert(**x)[0]
        notes = speed.apply_speed(expert, speed.Speed(attention="_native_math"), "cpu")
        after = expert(**x)[0]
    assert notes == ["attention _native_math"]
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)


def test_session_takes_the_levers(tiny_wan_pipeline):
    from producer.engines.wan import wan
    from producer.facts import hardware
    from producer.sizing import memory

    plan = memory.plan_memory(hardware.from_sizes(0, 16), memory.WAN_FOOTPRINT, memory.wan_workload(64, 64, 9))
    session = wan.WanSession.from_components(tiny_wan_pipeline, plan, "cpu", progress=False,
                                             speed=speed.Speed(attention="_native_math"))
    session._bring_in("transformer")
    assert session.speed_notes == ["attention _native_math"]


def test_the_report_keeps_each_experts_first_notes(tiny_wan_pipeline, monkeypatch):
    """A compile's seconds are in the first expert's notes; the second expert, which finds the code compiled,
    must not put them out of the report (it used to replace them)."""
    from producer.engines.wan import wan
    from producer.facts import hardware
    from producer.sizing import memory

    calls = []
    monkeypatch.setattr(speed, "apply_speed", lambda module, levers, device: calls.append(1) or (
        ["compiled (Q4_K: 9.8 s)"] if len(calls) == 1 else ["compiled (Q4_K: 0.0 s; compiled earlier)"]))
    plan = memory.plan_memory(hardware.from_sizes(0, 16), memory.WAN_FOOTPRINT, memory.wan_workload(64, 64, 9))
    session = wan.WanSession.from_components(tiny_wan_pipeline, plan, "cpu", progress=False,
                                             speed=speed.Speed(compile_dequantize=True))
    for component in ("transformer", "transformer_2"):
        session._bring_in(component)
    assert session.speed_notes == ["compiled (Q4_K: 9.8 s)", "compiled (Q4_K: 0.0 s; compiled earlier)"]


def test_fp8_matmul_is_recorded_in_both_scripts_recipes(standin_hf_home, tmp_path):
    from types import SimpleNamespace

    from PIL import Image
    from producer.engines.qwen import qwen_jobs
    from producer.makers import qwen_image, wan_video

    frame = tmp_path / "f.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(frame)
    for fp8 in (False, True):
        extra = ["--fp8-matmul"] if fp8 else []
        args = wan_video.build().parse_args(["--start-frame", str(frame), "--prompt", "waves", "-o",
                                             str(tmp_path / "c.mp4"), "--seed", "1"] + extra)
        load = wan_video.resolve_load(args)
        req = wan_video.resolve_request(args, distilled=load.distill is not None)
        wan = wan_video.recipe_for(req, load, SimpleNamespace(provenance={}), args.fp8_matmul)["settings"]
        qargs = qwen_image.build().parse_args(["--prompt", "a lighthouse", "-o", str(tmp_path / "a.png"),
                                               "--seed", "1"] + extra)
        qwen = qwen_jobs.resolve(qargs).settings
        assert (wan.get("matmul"), qwen.get("matmul")) == (("fp8", "fp8") if fp8 else (None, None))


def test_the_json_report_says_which_levers_ran(standin_hf_home, tmp_path, capsys):
    import json

    from PIL import Image
    from producer.makers import qwen_image, wan_video

    code = qwen_image.main(["--prompt", "a lighthouse", "-o", str(tmp_path / "a.png"), "--attention", "_native_math",
                            "--lightning", "off", "--cfg", "1", "--steps", "2", "--size", "64x64", "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["speed"] == ["attention _native_math"]
    frame = tmp_path / "f.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(frame)
    code = wan_video.main(["--start-frame", str(frame), "--prompt", "waves", "--frames", "5", "--size", "64x64", "-o",
                           str(tmp_path / "c.mp4"), "--attention", "_native_math", "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["speed"] == ["attention _native_math"]
