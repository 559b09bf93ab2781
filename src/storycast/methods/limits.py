"""A method's per-frame limits, and what a benchmark run does instead of refusing the story.

Benchmark stories (ViStoryBench's) have shots with any number of characters, characters that never appear alone,
animals, long prompts, Chinese text. Outside a benchmark a method refuses what it cannot draw (its ``check``), so
that a user fixes the story. In a benchmark the story is the benchmark's: every story must be drawn, and each
frame a method cannot take as it is falls back in one documented way, recorded per frame. Each method declares its
limits (:meth:`storycast.methods.base.StoryMethod.frame_limits`); the planner applies them
(:func:`apply_limits`) and records them in the run's manifest (``limits``); the benchmark counts them.

The fallbacks, all story transforms the planner applies before any model loads (so a frame's key holds what it is
drawn from, and a rerun redraws nothing):

- ``without-characters``: the frame is drawn without the characters named (they stay in its text; the method keeps
  no identity for them there); without all of them it is the method's plain frame;
- ``without-references``: the characters' reference images are not read (the method draws them from text);
- ``as-is``: nothing changes; what the model does with the frame is recorded (a prompt cut by the text encoder).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storycast.story.model import Story

WITHOUT_CHARACTERS = "without-characters"
WITHOUT_REFERENCES = "without-references"
AS_IS = "as-is"
FALLBACKS = (WITHOUT_CHARACTERS, WITHOUT_REFERENCES, AS_IS)

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
"""Han characters: text an English-trained text encoder reads as unknown pieces."""


@dataclass(frozen=True)
class FrameLimit:
    """One limit of a method met by one frame, and what the run does instead.

    Attributes:
        frame: The frame's index in the story.
        limit: What the method cannot take (a short name: ``solo-frames``, ``class-word-cut``, ``prompt-tokens``...).
        detail: The limit in words, for this frame.
        fallback: One of :data:`FALLBACKS`.
        characters: The characters the fallback concerns (left out, or their references not read).
    """

    frame: int
    limit: str
    detail: str
    fallback: str
    characters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"characters": list(self.characters)}


def apply_limits(story: Story, limits: Iterable[FrameLimit]) -> Story:
    """``story`` as the fallbacks of ``limits`` draw it: characters left out of frames, references not read."""
    dropped: dict[int, set[str]] = {}
    unreferenced: set[str] = set()
    for limit in limits:
        if limit.fallback == WITHOUT_CHARACTERS:
            dropped.setdefault(limit.frame, set()).update(limit.characters)
        elif limit.fallback == WITHOUT_REFERENCES:
            unreferenced.update(limit.characters)
    frames = tuple(
        dataclasses.replace(frame, characters=tuple(c for c in frame.characters if c not in dropped[index]))
        if index in dropped
        else frame
        for index, frame in enumerate(story.frames)
    )
    characters = tuple(dataclasses.replace(c, references=()) if c.id in unreferenced else c for c in story.characters)
    return dataclasses.replace(story, frames=frames, characters=characters)


def each_frame_showing(
    story: Story, characters: Sequence[str], limit: str, detail: str, fallback: str
) -> list[FrameLimit]:
    """The limit ``limit`` on every frame naming some of ``characters`` (a story-wide limit, recorded per frame)."""
    wanted = set(characters)
    return [
        FrameLimit(index, limit, detail, fallback, tuple(c for c in frame.characters if c in wanted))
        for index, frame in enumerate(story.frames)
        if wanted & set(frame.characters)
    ]


def no_face_limits(story: Story, method: str, fallback: str) -> list[FrameLimit]:
    """Per frame, ``fallback`` for the characters a method that reads a face from reference images finds none in:
    those with images whose ``kind`` says they have no face (ViStory's ``non_human``: a face detector finds nothing
    in a dog's photos, and a face encoder's identity from them is no face's)."""
    faceless = [c.id for c in story.appearing_characters() if c.references and c.has_face is False]
    detail = f"the character is not human (kind non_human): it has no face for {method} to read from its images"
    return each_frame_showing(story, faceless, "no-face", detail, fallback)


def plain_frames(story: Story, limit: str, detail: str) -> list[FrameLimit]:
    """Every frame drawn as the method's plain frame (without the characters it names)."""
    return [
        FrameLimit(index, limit, detail, WITHOUT_CHARACTERS, tuple(frame.characters))
        for index, frame in enumerate(story.frames)
    ]


def class_words_cut(tokenizer: Any, story: Story, index: int, prompt: str | None = None) -> list[str]:
    """The characters of frame ``index`` whose class word is not within the text encoder's tokens of ``prompt``
    (default: the frame's prompt): a method that finds a character by its class word's token cannot find it."""
    from storycast.attention.character_masks import word_token_positions

    names = story.frames[index].characters
    if not names:
        return []
    text = story.prompt(index) if prompt is None else prompt
    words = [story.character(c).class_word for c in names]
    found = word_token_positions(tokenizer, text, words)
    return [c for c, tokens in zip(names, found, strict=True) if not tokens]


def cut_limits(
    story: Story, method: str, length: int, cut_of: Callable[[int], Sequence[str]], *, where: str = "the prompt",
    does: str = "attaches a character's identity",
) -> list[FrameLimit]:  # fmt: skip
    """Per frame, the characters ``cut_of(index)`` names (their class word is beyond the text encoder's ``length``
    tokens of ``where``, where ``method`` ``does``), drawn without them."""
    found = []
    for index in range(len(story)):
        cut = tuple(cut_of(index))
        if cut:
            detail = (
                f"the class word of {', '.join(cut)} is not within the text encoder's {length} tokens of {where}, "
                f"where {method} {does}"
            )
            found.append(FrameLimit(index, "class-word-cut", detail, WITHOUT_CHARACTERS, cut))
    return found


def class_word_limits(tokenizer: Any, story: Story, method: str) -> list[FrameLimit]:
    """Per frame, the characters a method that finds a character by its class word's token cannot find there."""
    return cut_limits(
        story, method, tokenizer.model_max_length, lambda index: class_words_cut(tokenizer, story, index),
        does="locates a character",
    )  # fmt: skip


def trigger_within(tokenizer: Any, prompt: str) -> bool:
    """Whether PhotoMaker's trigger word in ``prompt`` comes within the text encoder's tokens (the class token
    before it is where an identity is fused)."""
    from storycast.identity.photomaker_prompt import TRIGGER_WORD

    trigger = tokenizer(TRIGGER_WORD, add_special_tokens=False).input_ids
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return any(ids[i : i + len(trigger)] == trigger for i in range(len(ids) - len(trigger) + 1))


def trigger_limits(tokenizer: Any, story: Story, method: str, characters: Sequence[str]) -> list[FrameLimit]:
    """Per frame, the characters among ``characters`` whose PhotoMaker trigger word (after the class word, in the
    frame's triggered prompt) falls beyond the text encoder's tokens: their identity cannot be fused there, so the
    frame is drawn without them."""
    from storycast.identity.photomaker_prompt import triggered_prompts

    def cut(index: int) -> list[str]:
        prompts = triggered_prompts(story, index, set(characters))
        return [character for character, prompt in prompts.items() if not trigger_within(tokenizer, prompt)]

    return cut_limits(
        story, method, tokenizer.model_max_length, cut, does="fuses a character's identity from its reference images"
    )


def no_character(story: Story, method: str, keeps: str) -> str | None:
    """A method's :meth:`~storycast.methods.base.StoryMethod.nothing_to_keep` for a story whose frames name no
    character (``keeps``: what it would have kept), else None."""
    if story.appearing_characters():
        return None
    where = f"{story.source}: " if story.source else ""
    return (
        f"{where}no frame names a character, so {method} has no {keeps}. Fix: name the characters in the frames "
        f"({{id}} in the text, or frames[i].characters), or draw with --method vanilla."
    )


def text_notes(story: Story, tokenizer: Any | None, family: str | None) -> list[FrameLimit]:
    """What every method meets on the UNet families' CLIP encoders, recorded as it is (nothing changes): a prompt
    longer than the encoder's tokens is cut there; Chinese text is read by an encoder trained on English."""
    notes = []
    for index in range(len(story)):
        prompt = story.prompt(index)
        if family in ("sd15", "sdxl") and tokenizer is not None:
            count = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if count > tokenizer.model_max_length:
                detail = f"the prompt takes {count} CLIP tokens; the text encoder reads the first {tokenizer.model_max_length}"
                notes.append(FrameLimit(index, "prompt-tokens", detail, AS_IS))
        if CJK.search(prompt):
            detail = "the prompt is Chinese; the model's text encoders were trained on English captions"
            notes.append(FrameLimit(index, "language", detail, AS_IS))
    return notes


def limits_by_frame(limits: Iterable[FrameLimit]) -> dict[str, list[dict[str, Any]]]:
    """The manifest's record: frame index (as text, JSON's keys) -> its limits."""
    found: dict[str, list[dict[str, Any]]] = {}
    for limit in sorted(limits, key=lambda item: item.frame):
        found.setdefault(str(limit.frame), []).append(limit.to_dict())
    return found


def count_limits(records: Iterable[Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """Counts over runs' manifest records (:func:`limits_by_frame`): frames with a limit that changed the drawing,
    frames with any limit, and per limit the frames it was met in."""
    changed = noted = 0
    by_limit: Counter[str] = Counter()
    for record in records:
        for entries in (record or {}).values():
            noted += 1
            changed += any(e.get("fallback") != AS_IS for e in entries)
            by_limit.update({str(e.get("limit")) for e in entries})
    return {"frames_changed": changed, "frames_noted": noted, "by_limit": dict(sorted(by_limit.items()))}
