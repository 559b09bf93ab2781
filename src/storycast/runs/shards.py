"""Which share of a run's work this process does: a ``--shard I/N`` of a job array, and the processes that
``torchrun`` / ``accelerate launch`` started (accelerate's ``PartialState``), combined.

Work items (stories) are dealt round-robin, so every share gets a mix of every split. The run planner decides
what is left before the split, so a rerun after a crash or a lost node finishes only what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from storycast.errors import SettingsError


@dataclass(frozen=True)
class Share:
    """This process's share: items ``i`` with ``i % count == index``.

    Attributes:
        index: 0-based share number.
        count: Shares in all.
        process: This process's rank among the processes of one job (0 alone).
        processes: Processes of one job (1 alone).
    """

    index: int = 0
    count: int = 1
    process: int = 0
    processes: int = 1

    @property
    def main(self) -> bool:
        """The process that writes tables and logs (rank 0 of its job)."""
        return self.process == 0

    def mine(self, items: int) -> list[int]:
        return [i for i in range(items) if i % self.count == self.index]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise SettingsError(
            f"--shard {text!r} is not a shard. Fix: I/N with 0 <= I < N, e.g. --shard 0/4 for the first of four "
            f"(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."
        )
    return i, n


def launched_processes() -> int:
    """How many processes ``torchrun`` / ``accelerate launch`` started (1 when run plainly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current_share(shard: tuple[int, int] = (0, 1)) -> tuple[Share, Any]:
    """This process's share of a job split by ``shard`` and by the launched processes, with accelerate's state
    (None when there is one process): ``state.device`` is this process's device and ``state.wait_for_everyone``
    the barrier."""
    index, count = shard
    if launched_processes() <= 1:
        return Share(index, count), None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    world, rank = state.num_processes, state.process_index
    return Share(index * world + rank, count * world, rank, world), state
