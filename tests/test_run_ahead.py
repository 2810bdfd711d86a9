"""The opt-in run-ahead of streamed blocks: the bound on the host (fake events stand in for CUDA's), what the
plan counts for it, and that nothing changes where blocks do not stream on CUDA streams."""

import pytest
import torch
from producer.facts.hardware import from_sizes
from producer.sizing import memory, offload, plan_table, run_ahead
from producer.sizing.placement import Placement


class FakeEvent:
    def __init__(self, log: list, number: int):
        self.log, self.number = log, number

    def record(self):
        self.log.append(("record", self.number))

    def synchronize(self):
        self.log.append(("wait", self.number))


def _events(log: list):
    count = iter(range(1000))
    return lambda: FakeEvent(log, next(count))


def test_the_host_starts_a_block_once_the_one_two_back_has_run():
    log = []
    blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(4))
    run_ahead.install(list(blocks), _events(log))
    x = torch.randn(2, 4)
    for _ in range(2):  # two forwards: the bound carries over from one to the next
        for block in blocks:
            x = block(x)
    assert log == [("record", 0), ("record", 1), ("wait", 0), ("record", 2), ("wait", 1), ("record", 3),
                   ("wait", 2), ("record", 4), ("wait", 3), ("record", 5), ("wait", 4), ("record", 6),
                   ("wait", 5), ("record", 7)]


@pytest.mark.parametrize("family", ["wan", "qwen"])
def test_the_plan_counts_one_more_block_in_flight_and_takes_it_only_where_it_fits(family):
    _, footprint, work = plan_table.TABLE_WORKLOADS[family]
    machine = from_sizes(12, 32)
    plain = memory.plan_memory(machine, footprint, work, max_resident_blocks=0, run_ahead=False)
    ahead = memory.plan_memory(machine, footprint, work, max_resident_blocks=0)  # the default
    assert ahead.run_ahead and not plain.run_ahead and "host runs ahead" in ahead.summary()
    assert ahead.generating_vram - plain.generating_vram == memory.block_bytes(footprint, ahead.weights)
    # With resident blocks the lever is counted first: they fill what is left.
    assert memory.plan_memory(machine, footprint, work).resident_blocks <= \
        memory.plan_memory(machine, footprint, work, run_ahead=False).resident_blocks
    resident = memory.plan_memory(from_sizes(80, 64), footprint, work)
    assert resident.placement is Placement.GPU and not resident.run_ahead and not resident.notes


def test_a_card_without_room_for_it_waits_at_every_block_and_says_so():
    _, footprint, work = plan_table.TABLE_WORKLOADS["wan"]
    plan = memory.plan_memory(from_sizes(8, 32), footprint, work)
    assert plan.placement is Placement.GROUP_OFFLOAD and not plan.run_ahead
    assert "no VRAM for the host to run ahead of streamed blocks: it waits at each" in plan.notes


def test_without_cuda_streams_nothing_is_installed():
    from diffusers import WanTransformer3DModel
    from diffusers.hooks import HookRegistry
    from producer.testing import standin_models

    model = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG).eval()
    offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device("cpu"), run_ahead=True)
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in model.blocks)
    hook = HookRegistry.check_if_exists_or_initialize(model.blocks[0]).get_hook("group_offloading")
    assert hook.group.stream is None and not hook.group.record_stream


def test_on_cuda_streams_diffusers_records_and_only_the_streamed_blocks_are_bounded(monkeypatch):
    """The wiring, without a GPU: diffusers' offloading is replaced by a recorder of its arguments."""
    import diffusers.hooks
    from diffusers import WanTransformer3DModel
    from producer.testing import standin_models

    calls = []
    monkeypatch.setattr(diffusers.hooks, "apply_group_offloading", lambda module, **kw: calls.append(kw))
    monkeypatch.setattr(offload, "pin_in_place", lambda module: 0)
    model = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG).eval()
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # "on the card": stays here
    offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device("cuda"), resident_blocks=1, run_ahead=True)
    assert calls[0]["use_stream"] and calls[0]["record_stream"]
    kept = set(offload.resident_indices(len(model.blocks), 1))
    for i, block in enumerate(model.blocks):
        assert bool(block._forward_pre_hooks) == bool(block._forward_hooks) == (i not in kept)
    calls.clear()
    plain = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG).eval()
    offload.place_module(plain, Placement.GROUP_OFFLOAD, torch.device("cuda"))
    assert calls[0]["use_stream"] and not calls[0]["record_stream"]
    assert all(not block._forward_pre_hooks for block in plain.blocks)
