"""One-off costs the estimate adds to a run's first item: what the benchmark's timed items leave out."""

from __future__ import annotations

import pytest
from producer.facts import hardware
from producer.sizing import estimate
from test_estimate import plan_on, wan_480p


def test_a_run_that_compiles_the_gguf_dequantization_pays_the_compile_once():
    """Compiling happens at the load, outside the items the benchmark times, so its seconds come from the runs'
    speed notes (the longest per family; a second expert's "compiled earlier" note gives none) and go into the
    first item's extra only where the run takes the lever."""
    from load_paces import dequant_compile_s

    runs = [{"workload": "wan-480p-4", "speed": ["GGUF dequantization compiled (Q4_K, Q6_K: 10.0 s)"]},
            {"workload": "wan-480p-4", "speed": [("GGUF dequantization compiled (Q4_K, Q6_K: 0.0 s; Q4_K, Q6_K "
                                                  "compiled earlier in this process)")]},
            {"workload": "qwen-1ref-4", "speed": ["GGUF dequantization compiled (Q8_0: 4.5 s)"]},
            {"workload": "qwen-1ref-4", "speed": ["GGUF dequantization compiled (Q8_0: 6.6 s)", "compiled blocks"]},
            {"workload": "qwen-1ref-4", "speed": []}]
    assert dequant_compile_s(runs) == {"wan": 10.0, "qwen": 6.6}
    model = estimate.speed_model()
    compile_s = model["assumptions"]["dequant_compile_s"]
    assert compile_s["wan"] == 10.0 and 4 <= compile_s["qwen"] <= 9
    plan = plan_on(hardware.from_sizes(10, 32, name="NVIDIA H100 SXM"))
    h100 = estimate.gpu_spec("NVIDIA H100 SXM")
    levers = estimate._wanted_levers(plan, 1, "wan", "cuda")
    one = estimate.predict_item(wan_480p(), plan, h100, model=model, levers=levers)
    compiled = estimate.predict_item(wan_480p(), plan, h100, model=model, levers=(*levers, "compiled-dequantize"))
    entry, _ = estimate.find_entry(model, wan_480p(), plan.name, plan.weights, (*levers, "compiled-dequantize"),
                                   h100.name)
    assert compiled.first_extra_s == pytest.approx((entry["cold_extra_s"] or 0) + 10.0, abs=0.01)
    assert any("compiling the GGUF dequantization" in n for n in compiled.notes)
    assert not any("compiling the GGUF dequantization" in n for n in one.notes)
