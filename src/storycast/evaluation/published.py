"""Numbers the papers published, as data, with where each comes from.

They are printed beside our own numbers in results and comparison tables, under the eval preset
whose protocol produced them. ConsiStory only plots its numbers (no table), so it has no rows here; CharaConsist
and Story2Board report no ConsiStory-Human numbers (Story2Board evaluates on its own Rich Storyboard Benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRow:
    """One row of a paper's results table.

    Attributes:
        method: The method as named in the table.
        venue: Where the method was published.
        protocol: The eval preset that reproduces the table's protocol.
        benchmark: The benchmark the numbers are on.
        split: The split ('single', ...) or '' when the paper does not say.
        values: Metric name (``presets.METRICS`` keys, plus e.g. 'dreamsim') -> value, on the paper's scale.
        source: The table and document the numbers are read from.
        note: Anything that qualifies the row.
    """

    method: str
    venue: str
    protocol: str
    benchmark: str
    split: str
    values: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "venue": self.venue,
            "protocol": self.protocol,
            "benchmark": self.benchmark,
            "split": self.split,
            "values": dict(self.values),
            "source": self.source,
            "note": self.note,
        }


IDENTITYSTORY_SOURCE = (
    "IdentityStory (AAAI 2026, arXiv 2512.23519), main table on its poster and project page (docs/metrics.md §1.3)"
)
IDENTITYSTORY_PHOTOMAKER_SOURCE = "IdentityStory poster, 'Comparison with PhotoMaker' table (docs/metrics.md §1.3)"
ONE_PROMPT_SOURCE = "1Prompt1Story (ICLR 2025, arXiv 2501.13554), Table 1 (docs/metrics.md §3.2)"
IDENTITYSTORY_SPLIT_NOTE = "split not stated on the poster; docs/metrics.md §1.3 reads it as single-character"


def _identitystory(method: str, venue: str, *values: float) -> PublishedRow:
    names = ("clip_t", "clip_t_c", "clip_i", "face_sim", "qalign_gen", "qalign_aes")
    return PublishedRow(
        method,
        venue,
        "identitystory",
        "ConsiStory-Human",
        "single",
        dict(zip(names, values, strict=True)),
        IDENTITYSTORY_SOURCE,
        IDENTITYSTORY_SPLIT_NOTE,
    )


def _one_prompt(method: str, base: str, clip_t: float, clip_i: float, dreamsim: float) -> PublishedRow:
    return PublishedRow(
        method,
        base,
        "1prompt1story",
        "ConsiStory+",
        "",
        {"clip_t": clip_t, "clip_i": clip_i, "dreamsim": dreamsim},
        ONE_PROMPT_SOURCE,
        "background noised with CarveKit before CLIP-I",
    )


PUBLISHED_ROWS: tuple[PublishedRow, ...] = (
    _identitystory("ConsiStory", "SIGGRAPH'24", 35.5, 30.1, 78.2, 17.1, 3.75, 4.71),
    _identitystory("StoryDiffusion", "NeurIPS'24", 34.0, 30.7, 85.2, 27.1, 3.58, 4.20),
    _identitystory("Story-Adapter", "arXiv'24", 34.3, 29.1, 76.6, 23.9, 3.65, 4.42),
    _identitystory("1Prompt1Story", "ICLR'25", 34.9, 29.7, 79.8, 23.5, 4.16, 4.81),
    _identitystory("IdentityStory", "AAAI'26", 35.4, 31.1, 85.8, 55.5, 4.25, 4.92),
    PublishedRow(
        "PhotoMaker",
        "CVPR'24",
        "identitystory",
        "ConsiStory-Human",
        "single",
        {"clip_t": 34.6, "clip_i": 84.1, "face_sim": 47.9, "qalign_gen": 3.84},
        IDENTITYSTORY_PHOTOMAKER_SOURCE,
        IDENTITYSTORY_SPLIT_NOTE,
    ),
    _one_prompt("Vanilla SD1.5", "SD1.5", 0.8353, 0.7474, 0.5873),
    _one_prompt("Vanilla SDXL", "SDXL", 0.9074, 0.8165, 0.5292),
    _one_prompt("BLIP-Diffusion", "SD1.5", 0.7607, 0.8863, 0.2830),
    _one_prompt("Textual Inversion", "SDXL", 0.8378, 0.8229, 0.4268),
    _one_prompt("The Chosen One", "SDXL", 0.7614, 0.7831, 0.4929),
    _one_prompt("PhotoMaker", "SDXL", 0.8651, 0.8465, 0.3996),
    _one_prompt("IP-Adapter", "SDXL", 0.8458, 0.9429, 0.1462),
    _one_prompt("ConsiStory (re-impl.)", "SDXL", 0.8769, 0.8737, 0.3188),
    _one_prompt("StoryDiffusion", "SDXL", 0.8877, 0.8755, 0.3212),
    _one_prompt("Naive Prompt Reweighting", "SDXL", 0.8411, 0.8916, 0.2548),
    _one_prompt("1Prompt1Story", "SDXL", 0.8942, 0.9117, 0.1993),
)


def published_rows(protocol: str) -> list[PublishedRow]:
    """The published rows measured with ``protocol`` (an eval preset name), in table order."""
    return [row for row in PUBLISHED_ROWS if row.protocol == protocol]
