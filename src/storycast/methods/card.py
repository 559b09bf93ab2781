"""What a user asks of a method before choosing it: which families it runs on and why, whether it needs training,
what it takes as input, what a frame costs and where it comes from.

Each method class carries a :class:`MethodCard`; ``storycast methods`` prints it and the README's table of methods
is :func:`methods_table` (a test holds the README to it, so the table cannot drift from the code).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storycast.methods.base import StoryMethod
    from storycast.settings import MethodSettings

FAMILY_LABELS = {"sd15": "SD 1.5", "sdxl": "SDXL", "flux": "FLUX.1"}
"""How the families are written for people (the registry's names are the command line's)."""


@dataclass(frozen=True)
class MethodCard:
    """A method's facts for choosing it.

    Attributes:
        families_why: Why the method runs on the families it lists (and not on the others).
        training: ``"training-free"``, or what has to be trained and where its weights come from.
        inputs: What a story gives it: text alone, reference photos, or either.
        cost: Denoiser evaluations per frame against vanilla on the same family, as measured
            (``benchmarks/RESULTS.md``).
        source: The paper (venue) and the code followed (repository at a commit), or that there is none.
    """

    families_why: str
    training: str
    inputs: str
    cost: str
    source: str


@dataclass(frozen=True)
class MethodAbout:
    """What is known of a method without importing it (its module imports torch): what ``storycast methods`` lists
    and ``storycast validate`` checks. A built-in method keeps it in its folder's ``about.py`` and its class takes it
    (``class XMethod(StoryMethod, about=ABOUT)``); a plug-in's is read from its class.

    Attributes:
        name: The registry name (``--method``).
        summary: One line for ``storycast methods``.
        families: Model families the method runs on.
        settings: Its settings class (a module that imports no torch).
        card: Families and why, training, input, cost, source.
    """

    name: str
    summary: str
    families: tuple[str, ...]
    settings: type[MethodSettings]
    card: MethodCard | None = None

    @classmethod
    def of(cls, method: Any) -> MethodAbout:
        """The facts of a method class (a plug-in's, read from its class attributes)."""
        return cls(method.name, method.summary, tuple(method.families), method.settings_class, method.card)


def family_labels(families: Iterable[str]) -> str:
    return ", ".join(FAMILY_LABELS.get(name, name) for name in families)


def methods_table(methods: Iterable[MethodAbout | type[StoryMethod]]) -> str:
    """The README's table: one row per method (name, families, training, inputs, cost per frame, source)."""
    lines = [
        "| method | families | training | input | cost per frame (x vanilla) | from |",
        "|---|---|---|---|---|---|",
    ]
    for method in methods:
        card = method.card
        if card is None:
            lines.append(f"| `{method.name}` | {family_labels(method.families)} | | | | |")
            continue
        cells = (
            f"`{method.name}`",
            family_labels(method.families),
            card.training,
            card.inputs,
            card.cost,
            card.source,
        )
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
