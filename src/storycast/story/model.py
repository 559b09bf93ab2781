"""The story model: what a story file means, parsed once into frozen dataclasses.

Frame text refers to characters with ``{id}`` placeholders, which expand to the character's
description. A prompt is ``style + text + style_suffix``. See ``docs/story-format.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
KINDS = ("realistic_human", "unrealistic_human", "non_human")
"""What a character is, in ViStoryBench's character tags (``story.json`` ``Characters.<key>.tag``, read by
``dataset_load.py`` at 514cc31): a photographed person, a drawn or stylised person, or not a person (an animal, a
creature, a robot). Only ``non_human`` changes what storycast does: it has no face to read (:attr:`Character.has_face`)."""


def contains_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive match ('man' is not found in 'woman')."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, flags=re.IGNORECASE) is not None


@dataclass(frozen=True)
class Character:
    """A person (or creature) who should look the same in every frame.

    Attributes:
        id: Short identifier used in frame text as ``{id}`` and in ``frames[i].characters``.
        description: Appearance in words, e.g. "young woman with short red hair and freckles".
        class_word: The word naming what the character is ("woman", "boy", "dog"); it must occur in the
            description. Identity methods attach the identity to this word's token.
        name: Display name for captions (defaults to ``id``).
        references: Photos of the person, for methods that take identity from images.
        identity: A key of the identity library (``storycast identities list``): the identity stored under it
            (discovered for a character of another story, or made from photos) is this character's, for the
            methods that read identities from the library (identitystory, photomaker), instead of its photos or a
            new discovery.
        kind: What the character is, one of :data:`KINDS` (ViStory's tag); None: not said. Methods that read a face
            from reference images leave a ``non_human`` character's images unread in a benchmark (limit ``no-face``).
    """

    id: str
    description: str
    class_word: str
    name: str | None = None
    references: tuple[Path, ...] = ()
    identity: str | None = None
    kind: str | None = None

    @property
    def has_face(self) -> bool | None:
        """Whether the character has a face a face detector could find in its photos: False for ``non_human``,
        True for a person (real or drawn; a detector may still miss a drawn face), None when ``kind`` is unknown."""
        return None if self.kind is None else self.kind != "non_human"

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Frame:
    """One illustration of the story.

    Attributes:
        text: What the frame shows; ``{id}`` expands to that character's description.
        characters: Ids of the characters in the frame, in the order they are mentioned.
        seed: Seed of this frame (default: the story seed + frame index).
        negative_prompt: Overrides the story's negative prompt for this frame.
        context: The frame's context phrase without the characters ("wearing a hat in a café"); the
            CLIP-T-C metric scores against it, and multi-character prompts are built from it.
        context_type: Kind of context ("clothes", "pose", "background", "action"), as in the benchmark.
        masks: Character id -> mask image (white = character) for methods that take user masks.
        caption: Caption under the frame in the storyboard (default: the frame text, expanded).
        control_image: A spatial condition (pose, depth, edges...) for methods run with a ControlNet.
    """

    text: str
    characters: tuple[str, ...] = ()
    seed: int | None = None
    negative_prompt: str | None = None
    context: str | None = None
    context_type: str | None = None
    masks: Mapping[str, Path] = field(default_factory=dict)
    caption: str | None = None
    control_image: Path | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """Settings shared by every method. ``None`` means "the model preset's default".

    Attributes:
        width: Image width in pixels (multiple of 8).
        height: Image height in pixels (multiple of 8).
        steps: Denoising steps.
        guidance_scale: Guidance scale: classifier-free guidance on the UNet families; the guidance value given to
            a guidance-distilled model (FLUX.1-dev); 0 for a model that takes none (FLUX.1-schnell).
        seed: Base seed; frame i uses ``seed + i`` unless the frame sets its own (see ``seed_policy``).
        negative_prompt: Negative prompt for every frame (``None``: the method's default).
        batch_size: Frames drawn together by methods that draw frames independently.
        seed_policy: "per-frame" (frame i uses ``seed + i``; the default) or "same" (every frame uses ``seed``,
            as the IdentityStory authors draw each benchmark prompt from seed 0). A frame's own seed wins.
        true_cfg_scale: Classifier-free guidance over the negative prompt on top of a model's embedded guidance
            (FLUX's "true CFG", above 1 to take effect; ``None``: off). The UNet families refuse it: their
            ``guidance_scale`` is classifier-free guidance already.
    """

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    negative_prompt: str | None = None
    batch_size: int = 1
    seed_policy: str | None = None
    true_cfg_scale: float | None = None


SEED_POLICIES = ("per-frame", "same")


@dataclass(frozen=True)
class Story:
    """A parsed, validated story.

    Attributes:
        title: Title shown on the storyboard.
        frames: The frames, in reading order.
        characters: Everyone who appears.
        style: Text put before every frame's text ("A watercolor illustration of").
        style_suffix: Text put after every frame's text (", storybook, soft light").
        settings: Generation settings from the file.
        methods: Method name -> that method's settings as written in the file (validated by the method).
        source: The file the story was read from, if any.
        source_format: "storycast" or "consistory-human".
    """

    title: str
    frames: tuple[Frame, ...]
    characters: tuple[Character, ...] = ()
    style: str = ""
    style_suffix: str = ""
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Path | None = None
    source_format: str = "storycast"

    def character(self, character_id: str) -> Character:
        for character in self.characters:
            if character.id == character_id:
                return character
        raise KeyError(f"story '{self.title}' has no character '{character_id}'")

    def appearing_characters(self) -> list[Character]:
        """The characters some frame names, in the story's order."""
        named = {cid for frame in self.frames for cid in frame.characters}
        return [c for c in self.characters if c.id in named]

    def uses_references(self) -> bool:
        """Whether a character some frame names has reference photos."""
        return any(c.references for c in self.appearing_characters())

    def frame_characters(self, index: int) -> tuple[Character, ...]:
        return tuple(self.character(cid) for cid in self.frames[index].characters)

    def expand(self, text: str) -> str:
        """Replace ``{id}`` placeholders by the characters' descriptions."""
        descriptions = {c.id: c.description for c in self.characters}
        return PLACEHOLDER.sub(lambda m: descriptions.get(m.group(1), m.group(0)), text)

    def scene_text(self, index: int) -> str:
        """The frame's text with placeholders expanded, without the style."""
        return self.expand(self.frames[index].text)

    def prompt(self, index: int) -> str:
        """The full text-to-image prompt of frame ``index``."""
        return join_prompt(self.style, self.scene_text(index), self.style_suffix)

    def negative_prompt(self, index: int) -> str | None:
        frame = self.frames[index]
        return frame.negative_prompt if frame.negative_prompt is not None else self.settings.negative_prompt

    def frame_seed(self, index: int) -> int:
        seed = self.frames[index].seed
        if seed is not None:
            return seed
        return self.settings.seed if self.settings.seed_policy == "same" else self.settings.seed + index

    def caption(self, index: int) -> str:
        """Caption for the storyboard: the frame's own, or its text with characters called by name."""
        frame = self.frames[index]
        if frame.caption is not None:
            return frame.caption
        names = {c.id: c.name or c.description for c in self.characters}
        return PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(0)), frame.text)

    def __len__(self) -> int:
        return len(self.frames)


def join_prompt(prefix: str, text: str, suffix: str = "") -> str:
    """``prefix text suffix`` with single spaces, tolerant of empty parts and leading punctuation."""
    out = " ".join(part.strip() for part in (prefix, text) if part and part.strip())
    if suffix and suffix.strip():
        suffix = suffix.strip()
        out = f"{out}{suffix}" if suffix[0] in ",.;:" else f"{out} {suffix}"
    return out
