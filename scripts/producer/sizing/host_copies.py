"""Offloading a group that moves without a stream points its weights back at their host copies.

diffusers' group offloading (0.42.1) moves the groups that have no stream with `Module.to`: at every forward
their weights go to the GPU and back, and back means a device-to-host copy into fresh pageable memory. With
block-level streaming these are the model's own weights outside its block list (diffusers' "unmatched" group,
always without a stream): for a Wan expert ~0.46 GB (the time projection alone is 5120 x 30720), copied back
at every forward: 271 ms of `Memcpy DtoH (Device -> Pageable)` in a 3.91 s streamed Wan forward, two thirds of
what streaming added to it (bench/forward_profile.py, H200, bench/results/2026-12-07-h200/forward.json). For
a streamed Qwen2.5-VL text encoder it is the 1.1 GB token table at every prompt. Leaf-level (sequential)
offloading moves every group so.

The weights never change while offloaded (LoRAs are fused or folded before placement; a later load adds
adapters, or deltas written into the host copy in place), so the copy back is needless: here such a group's
offload drops the device tensors and points each weight at the host tensor it had when offloading was applied
(page-locked where the plan pinned it, so the next onload is a direct transfer, not a pageable one). Device
memory is freed as before: onload and the compute run on the current stream, where the allocator reuses it in
order.
"""

from __future__ import annotations

import torch
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING


def keep_host_copies(module: torch.nn.Module) -> int:
    """Give every streamless group offloaded from host memory under `module` the offload above; returns how
    many groups changed. Call once group offloading is applied (its weights are then on the host)."""
    changed = 0
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        group = getattr(hook, "group", None)
        if group is None or group.stream is not None or group.offload_to_disk_path or group.offload_leader is not sub:
            continue
        if getattr(group, "_keeps_host_copies", False):
            continue
        restore = _host_tensors(group)
        if restore is None:
            continue
        group.offload_ = torch.compiler.disable(restore)
        group._keeps_host_copies = True
        changed += 1
    return changed


def _host_tensors(group):
    """A function that points the group's tensors back at their present (host) data; None where one is not on
    the host (nothing to keep)."""
    params = [p for m in group.modules for p in m.parameters()] + list(group.parameters)
    loose_buffers = list(group.buffers)
    owned_buffers = [(owner, name, buf) for m in group.modules for owner in m.modules()
                     for name, buf in owner._buffers.items() if buf is not None]
    tensors = [p.data for p in params] + [b.data for b in loose_buffers] + [b for _, _, b in owned_buffers]
    if not all(t.device.type == "cpu" for t in tensors):
        return None
    host = [(t, t.data) for t in params + loose_buffers + [b for _, _, b in owned_buffers]]

    def offload_() -> None:
        for tensor, data in host:  # onload gives each tensor new data (diffusers sets `.data`)
            tensor.data = data
        for owner, name, buf in owned_buffers:  # Module.to would have replaced buffers by new objects
            owner._buffers[name] = buf

    return offload_
