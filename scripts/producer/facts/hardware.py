"""What this machine has: accelerator, VRAM, RAM, disk. Read once, passed around as a value."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass

GiB = 1024**3


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda", "mps" or "cpu"
    gpu_name: str | None
    vram_total: int  # bytes; 0 without an accelerator
    vram_free: int
    ram_total: int
    ram_available: int
    disk_free: int  # where the models live
    compute_capability: tuple[int, int] | None = None  # (9, 0) for Hopper; fp8 matmuls need >= (8, 9)
    host_link: tuple[int, int] | None = None  # (PCIe generation, lanes) of the GPU, when the system says

    @property
    def has_gpu(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> str:
        ram = f"{self.ram_total / GiB:.0f} GiB RAM"
        if not self.has_gpu:
            return f"no GPU, {ram}"
        return f"{self.gpu_name} ({self.vram_total / GiB:.0f} GiB, {self.vram_free / GiB:.1f} free), {ram}"

    def to_dict(self) -> dict:
        return asdict(self)


def _ram() -> tuple[int, int]:
    """Total and available host RAM; no more than PRODUCER_RAM_GB when set (the benchmark plans for a smaller
    machine this way, as it caps CUDA memory for a smaller card; the process's memory itself is not limited)."""
    import psutil

    vm = psutil.virtual_memory()
    limit = _gib_from_env("PRODUCER_RAM_GB")
    return min(int(vm.total), limit or int(vm.total)), min(int(vm.available), limit or int(vm.available))


def _gib_from_env(name: str) -> int | None:
    """Bytes from an environment variable in GB (the benchmark's machine emulation); None when unset, or not
    a positive number (with a warning: the real machine is used)."""
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        import logging

        logging.getLogger("producer").warning("warning: %s=%r is not a positive number of GB; ignored", name, text)
        return None
    return int(value * GiB)


# Both settings are PyTorch's own (PYTORCH_CUDA_ALLOC_CONF, docs.pytorch.org/docs/stable/notes/cuda.html).
ALLOCATOR_SETTING = ("expandable_segments:True,"
                     "pinned_use_cuda_host_register:True,pinned_num_register_threads:8")


def configure_cuda_allocator() -> None:
    """Set PyTorch's CUDA allocators for streaming, unless the user chose a setting.

    - Expandable segments: streaming weights block by block allocates and frees the same large sizes on two
      streams; fixed segments fragment, and the cache then holds more than the work needs: streaming Wan 480p
      reserved all of a 10 GiB cap (9.96 GiB) and 11.3 GiB of a 16 GiB one with fixed segments, 8.26 GiB with
      expandable ones (docs/performance.md).
    - Page-locked host memory made by cudaHostRegister on plain memory whose pages 8 threads map first, not by
      cudaHostAlloc (pytorch/pytorch#108488): a streamed expert's load reads its file into such chunks, and
      making them was most of the load. H200, 8 GiB of 256 MiB chunks: 5.96 s -> 1.92 s; the 10 GB / 32 GB
      plan's load to the first step 14.95 s -> 6.75 s (bench/results/2026-12-07-h200).
    Read when CUDA first allocates, so scripts call this before any work.
    """
    if sys.platform != "linux":  # expandable segments are a Linux feature; elsewhere PyTorch only warns
        return
    if not any(os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTING


def _cuda_cap_bytes() -> int | None:
    """A per-process CUDA memory cap (set_per_process_memory_fraction), as bytes, if one is set.

    The benchmark emulates a small card this way; the plan must see the cap, not the card.
    """
    return _gib_from_env("PRODUCER_VRAM_CAP_GB")


# Transfer rate (GT/s) of each PCIe generation, as Linux writes it in max_link_speed ("32.0 GT/s PCIe").
PCIE_GT_S = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}


def _pcie_link(props, devices: str = "/sys/bus/pci/devices") -> tuple[int, int] | None:
    """(generation, lanes) of the GPU's PCIe link from Linux's sysfs; None where it cannot be read.

    The device's maximum speed is read, not the current one: an idle GPU drops its link to save power. A slot
    slower than the card is not seen, so the estimate may err short there."""
    domain, bus, device = (getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if bus is None or not sys.platform.startswith("linux"):
        return None
    where = f"{devices}/{domain or 0:04x}:{bus:02x}:{device or 0:02x}.0"
    try:
        with open(f"{where}/max_link_speed") as f:
            speed = float(f.read().split()[0])
        with open(f"{where}/current_link_width") as f:
            lanes = int(f.read().strip())
    except (OSError, ValueError, IndexError):
        return None
    gen = PCIE_GT_S.get(speed)
    return (gen, lanes) if gen and lanes > 0 else None


def check_device(device: str | None) -> None:
    """A --device (cli's device_arg forms) this machine has, checked before probe(), which would ask CUDA about an
    index it does not have, and before a model loads onto it (torch's own error came only then: a crash)."""
    if device in (None, "cpu"):
        return
    import torch

    from producer.errors import CliError

    if device == "mps":
        present, here = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()), "no MPS"
    else:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        present = int(device.partition(":")[2] or 0) < count
        here = f"{count} CUDA GPU(s): cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
    if not present:
        raise CliError(f"--device {device}: no such accelerator here ({here})", "drop --device, or use --device cpu")


def probe(models_dir: str | None = None, device: str | None = None) -> Hardware:
    """Probe the machine. `device` forces "cpu" (or a CUDA index such as "cuda:1")."""
    import torch

    ram_total, ram_available = _ram()
    disk_dir = models_dir or os.environ.get("HF_HOME") or os.path.expanduser("~")
    while not os.path.exists(disk_dir):
        disk_dir = os.path.dirname(disk_dir) or "."
    disk_free = shutil.disk_usage(disk_dir).free

    want = (device or "auto").lower()
    if want != "cpu" and torch.cuda.is_available():
        index = int(want.split(":")[1]) if want.startswith("cuda:") else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        cap = _cuda_cap_bytes()
        if cap is not None and cap < total:
            free, total = min(free, cap), cap
        props = torch.cuda.get_device_properties(index)
        return Hardware("cuda", props.name, int(total), int(free), ram_total, ram_available, disk_free,
                        (props.major, props.minor), _pcie_link(props))
    if want in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        # Apple silicon shares RAM with the GPU: count what Metal recommends as its working set.
        total = int(torch.mps.recommended_max_memory())
        return Hardware("mps", "Apple GPU (MPS)", total, total, ram_total, ram_available, disk_free)
    return Hardware("cpu", None, 0, 0, ram_total, ram_available, disk_free)


def from_sizes(vram_gb: float, ram_gb: float, disk_gb: float = 500.0, name: str = "GPU",
               capability: tuple[int, int] | None = (8, 6), host_link: tuple[int, int] | None = None) -> Hardware:
    """A hypothetical machine, for the plan table, `setup --check --assume` and tests."""
    vram = int(vram_gb * GiB)
    device = "cuda" if vram else "cpu"
    return Hardware(device, name if vram else None, vram, vram, int(ram_gb * GiB), int(ram_gb * GiB),
                    int(disk_gb * GiB), capability if vram else None, host_link if vram else None)
