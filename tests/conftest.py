"""Shared test setup: an offline Hugging Face hub, a fresh HF_HOME per test, tiny stand-in models.

Fixtures:
- `offline_hf_home` (autouse): HF_HUB_OFFLINE=1 and HF_HOME (and HF_ASSETS_CACHE, where kept LoRA folds go)
  pointed at an empty temp folder for every test, undone afterwards. Nothing can reach the Hub or the real cache in ~/.cache.
- `standin_install` (session): every stand-in built and installed once into a temp HF_HOME; its
  `.hf_home` and `.manifest` (see producer.testing.standins.install_standins). Treat it as read-only: a test
  that writes models installs its own with `install_standins(tmp_path, [...])`.
- `standin_hf_home`: points HF_HOME at that install for one test and returns the folder.
- `finished_demo` (session): the sample film made by `production.py demo` on those stand-ins, and its result.
- `inject`: inject(point, action) sets a fault (producer.files.faults) for the next run in this process.
Helpers: `use_hf_home`, `run_json` (a script's main with --json: code, report, stderr).
- `tiny_wan_pipeline`, `tiny_qwen_edit_pipeline`, `tiny_qwen_t2i_pipeline`, `tiny_qwen_controlnet`:
  fresh in-memory stand-ins (a few tens of milliseconds each), safe to modify (e.g. load a LoRA).
- `qwen_standin_areas`: shrinks the Qwen edit pipeline's reference sizes for one test.
- `frozen_heap` (autouse): the objects made before a test are out of its gc.collect calls' way.
- `world`, `in_world`, `stages`: the fuzz tests' world, that folder as the cwd, their stage counts (tests/fuzzing.py).
"""

import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

# huggingface_hub reads HF_HUB_OFFLINE once, when it is imported, and diffusers copies the value at
# its own import: set it before any test module imports them. The autouse fixture below also patches
# the module constant, which is what `huggingface_hub.is_offline_mode()` reads at call time.
os.environ["HF_HUB_OFFLINE"] = "1"


def share_cores_between_workers() -> None:
    """Under pytest-xdist each worker is a process of its own, and torch's default (one OpenMP thread per
    core in each) oversubscribes the cores: two workers on two cores spent about half their time spinning.
    Each worker, and every script it starts (they inherit the environment), gets its share of the cores.
    Set before torch is imported, which reads it once; an OMP_NUM_THREADS given by the user wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


share_cores_between_workers()

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:  # pyproject's pythonpath covers pytest runs; this covers other runners
    sys.path.insert(0, str(SCRIPTS))

from fuzzing import in_world, stages, world  # noqa: F401 - the fuzz tests' fixtures (tests/fuzzing.py)
from producer.testing import standin_models, standins  # after the offline switch and the path, on purpose


def use_hf_home(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """Offline, with `hf_home` as the cache, for the environment (subprocesses, our scripts) and for
    huggingface_hub's constants (computed at import, so changing the environment alone does nothing)."""
    from huggingface_hub import constants

    hub = Path(hf_home) / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    for overriding in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # would win over HF_HOME
        monkeypatch.delenv(overriding, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hub))


@pytest.fixture(autouse=True)
def offline_hf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    hf_home = tmp_path_factory.mktemp("hf-home")  # not inside tmp_path: tests may expect that one empty
    use_hf_home(monkeypatch, hf_home)
    # kept LoRA folds (engines/loras/lora_store) stay with the test, also under the shared stand-in install
    monkeypatch.setenv("HF_ASSETS_CACHE", str(hf_home / "assets"))
    return hf_home


class StandinInstall(NamedTuple):
    hf_home: Path
    manifest: dict


@pytest.fixture(scope="session")
def standin_install(tmp_path_factory: pytest.TempPathFactory) -> StandinInstall:
    hf_home = tmp_path_factory.mktemp("standin-hf-home")
    return StandinInstall(hf_home, standins.install_standins(hf_home, seed=0))


def run_json(main, *argv) -> tuple[int, dict, str]:
    """`main(argv + ["--json"])` in this process: its exit code, its JSON report and its stderr (no traceback)."""
    import contextlib
    import io
    import json

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv] + ["--json"])
    assert "Traceback" not in err.getvalue()
    return code, json.loads(out.getvalue().strip().splitlines()[-1]), err.getvalue()


@pytest.fixture
def inject(monkeypatch):
    """inject(point, action): PRODUCER_FAULT for the next run in this process (producer.files.faults)."""
    import signal

    from producer.files import faults

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def set_fault(point: str, action: str) -> None:
        monkeypatch.setenv(faults.ENV, f"{point}={action}")
        faults.reset()

    yield set_fault
    signal.signal(signal.SIGINT, previous)
    faults.reset()


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory: pytest.TempPathFactory, standin_install: StandinInstall) -> tuple[Path, dict]:
    """The sample film made end to end on the stand-ins by `production.py demo`, once per test process, and
    the demo's JSON result. Read-only: a test that changes it works on a copy (shutil.copytree)."""
    import contextlib
    import io
    import json

    from producer.commands import production

    root = tmp_path_factory.mktemp("demo") / "lighthouse"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        use_hf_home(mp, standin_install.hf_home)
        code = production.main(["demo", str(root), "--models-dir", str(standin_install.hf_home), "--quiet", "--json"])
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 0, result
    return root, result


@pytest.fixture(scope="module")
def wan_q4(tmp_path_factory) -> tuple[Path, Path]:
    """A stand-in Wan expert written as a GGUF Q4_K_M file, and the folder of its config (`transformer/`)."""
    from producer.testing import standin_gguf

    path = tmp_path_factory.mktemp("gguf") / "HighNoise-Q4_K_M.gguf"
    expert = standin_models.build_wan_experts(seed=0)[0]
    standin_gguf.write_gguf(path, standin_gguf.wan_state_dict_to_original(expert.state_dict()), "wan", "Q4_K_M")
    config = tmp_path_factory.mktemp("config")
    expert.save_config(config / "transformer")
    return path, config


@pytest.fixture
def standin_hf_home(standin_install: StandinInstall, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_hf_home(monkeypatch, standin_install.hf_home)
    return standin_install.hf_home


@pytest.fixture
def qwen_standin_areas(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """What the generation script does when it finds the stand-in marker: small reference areas."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", standin_models.QWEN_REFERENCE_AREA)
    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", standin_models.QWEN_CONDITION_AREA)
    return standin_models.QWEN_REFERENCE_AREA, standin_models.QWEN_CONDITION_AREA


@pytest.fixture
def tiny_wan_pipeline():
    return standin_models.build_wan_pipeline(seed=0)


@pytest.fixture
def tiny_qwen_edit_pipeline(qwen_standin_areas):
    return standin_models.build_qwen_edit_pipeline(seed=0)


@pytest.fixture
def tiny_qwen_t2i_pipeline():
    return standin_models.build_qwen_t2i_pipeline(seed=0)


@pytest.fixture
def tiny_qwen_controlnet():
    return standin_models.build_qwen_controlnet(seed=0)


@pytest.fixture(autouse=True)
def frozen_heap():
    """The scripts run gc.collect when they free a model (the text encoder, an expert at the swap), and a full
    collection walks every object torch, diffusers and the earlier tests made: ~0.35 s a call in a worker,
    a tenth of the suite's time. Objects that exist before a test are moved out of its way for the test
    (gc.freeze); what the test makes is collected as before, and the rest is handed back after it."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _producer_log_reaches_caplog():
    """A script's main() run in-process gives the producer logger its own stderr handler and stops it
    propagating (so a user sees each line once); later tests that read the log through caplog need it
    back, whatever ran before them on the same worker."""
    import logging

    logging.getLogger("producer").propagate = True
    yield
