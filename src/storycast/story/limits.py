"""The generation limits a story's settings must keep: checked when a story is parsed and again when a run is
planned (:mod:`storycast.runs.plan`), from these same numbers, so a story that parses also plans."""

from __future__ import annotations

MIN_SIDE = 64
"""Smallest width or height accepted."""
MAX_SIDE = 4096
"""Largest width or height accepted (SDXL is trained at about 1 megapixel; 4096 px is 16 of those)."""
MAX_STEPS = 1000
"""Most denoising steps accepted (the schedulers' training timesteps)."""
MAX_BATCH = 64
"""Frames drawn together by per-frame methods: beyond this a batch only trades memory for nothing."""
MAX_SEED = 2**64 - 1
"""Seeds are unsigned 64-bit integers (``torch.Generator.manual_seed``)."""
