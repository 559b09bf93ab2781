"""A method for the benchmark tests: vanilla with a paper's benchmark protocol (every frame from seed 0, as
IdentityStory's authors draw their benchmark)."""

from __future__ import annotations

from typing import Any

from storycast.methods.vanilla import VanillaMethod


class ProtocolVanilla(VanillaMethod):
    name = "protocol-vanilla"

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        return {"seed": 0, "seed_policy": "same"}
