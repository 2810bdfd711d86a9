"""Streamed blocks without the host's wait at every block, the run-ahead bounded (opt-in: `MemoryPlan.run_ahead`).

With `record_stream` off (offload.py says why it was), diffusers' group offloading synchronises the host with
the compute stream as each streamed block is offloaded: the host launches the next block's kernels only once
the GPU has finished the last one, so the GPU idles while the host launches them. On the card the host runs
ahead and the GPU stays busy: one forward of Qwen's Q8 transformer kept its GPU 97% busy resident and 72%
streamed, 0.58 s against 0.78 s (H200, bench/results/2026-12-07-h200/forward-qwen.json; its copies, 0.43 s a
forward, fit under its compute).

Here diffusers records the streamed weights on the compute stream instead (`record_stream=True`: their
memory is reused only once the kernels that read them have run; the QwenImage garbage of diffusers issue
12673 came from recording on the wrong stream, fixed by PR 12721, which 0.42.1 has). Nothing would then stop
the host from queueing blocks far ahead, each into fresh memory, up to the card's size; so each streamed
block records an event when its kernels are queued, and before the host starts a block it waits for the
event `BLOCKS_AHEAD` blocks back. The host then launches a block while the GPU runs the one before, and one
more block's weights are held than with the wait (the plan counts it: `memory.RUN_AHEAD_BLOCKS`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

BLOCKS_AHEAD = 2  # the host may start block i once block i-2 has run: it launches i while the GPU runs i-1


class RunAhead:
    """The bound for one model's streamed blocks: `before()` as a block starts, `after()` once its kernels are
    queued. `make_event` gives an object with `record()` and `synchronize()` (a CUDA event on a GPU)."""

    def __init__(self, make_event: Callable[[], object], ahead: int = BLOCKS_AHEAD):
        self.make_event, self.ahead = make_event, ahead
        self.pending: deque = deque()

    def before(self, *_) -> None:
        while len(self.pending) >= self.ahead:
            self.pending.popleft().synchronize()

    def after(self, *_) -> None:
        event = self.make_event()
        event.record()
        self.pending.append(event)


def install(blocks: list[torch.nn.Module], make_event: Callable[[], object] | None = None) -> RunAhead:
    """Bound the host's run-ahead over `blocks` (the streamed ones, in their order). Registered as PyTorch's
    own forward hooks, which run outside diffusers' offloading hooks: the wait comes before the block's hook
    starts bringing in the next block, the event after the block's kernels and its offload are queued."""
    bound = RunAhead(make_event or torch.cuda.Event)
    # Outside any compiled region, as diffusers' own onload and offload are (compiled blocks run hooks inside).
    before, after = torch.compiler.disable(bound.before), torch.compiler.disable(bound.after)
    for block in blocks:
        block.register_forward_pre_hook(before)
        block.register_forward_hook(after)
    return bound
