"""PhotoMaker's trigger word: where the class token is, in text and in token ids.

The trigger word (official ``"img"``, added to both SDXL tokenizers as a special token) stands right after
the class word: "a young woman img with long black hair". It marks the class word's token; it is removed
before text encoding, and the class token's embedding is then replaced by the fused one (v1 here: one copy;
v2: one copy per ID token, :func:`expand_class_tokens`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storycast.story.model import Character, Story

TRIGGER_WORD = "img"


def insert_trigger_word(description: str, class_word: str, trigger_word: str = TRIGGER_WORD) -> str:
    """IdentityStory's search prompt: ``trigger_word`` inserted after the first whole-word, case-insensitive
    occurrence of ``class_word`` in ``description``; if there is none, ``description + " class_word trigger"``.

    ``insert_trigger_word("young woman with black hair", "woman") == "young woman img with black hair"``.
    """
    description, class_word = description.strip(), class_word.strip()
    if not class_word:
        raise ValueError("class_word is empty: give the word the trigger follows, e.g. 'woman'.")
    pattern = re.compile(rf"(?<!\w)({re.escape(class_word)})(?!\w)", flags=re.IGNORECASE)
    inserted, count = pattern.subn(lambda match: f"{match.group(1)} {trigger_word}", description, count=1)
    return inserted if count else f"{description} {class_word} {trigger_word}".strip()


def search_prompt(character: Character) -> str:
    """The character's description with PhotoMaker's trigger after its class word (what identity discovery draws
    from; part of a discovered identity's library key)."""
    return insert_trigger_word(character.description, character.class_word)


def remove_trigger_word(prompt: str, trigger_word: str = TRIGGER_WORD) -> str:
    """The prompt without the trigger word (whole words only), for text encoding.

    The authors use ``prompt.replace(" img", "")``, which would also cut "img" from the start of a longer
    word; here only the standalone word (and the space before it) is removed.
    """
    return re.sub(rf"\s*(?<!\w){re.escape(trigger_word)}(?!\w)", "", prompt).strip()


@dataclass(frozen=True)
class ClassTokens:
    """Token ids with the trigger removed, and where the class token stands.

    Attributes:
        input_ids: The ids without the trigger token, the class token repeated ``repeats`` times, padded or
            truncated to ``max_length`` when given.
        positions: Indices of the (repeated) class token in ``input_ids``.
    """

    input_ids: list[int]
    positions: list[int]


def find_class_tokens(
    input_ids: Sequence[int],
    trigger_token_id: int,
    *,
    repeats: int = 1,
    max_length: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
) -> ClassTokens:
    """Official PhotoMaker token logic: drop the trigger token, the class token is the one just before it.

    ``repeats`` copies of the class token are kept (one per ID image and token; IdentityStory uses 1). The
    prompt must hold exactly one trigger, preceded by a word (not by nothing, nor by ``bos_token_id``).

    Args:
        input_ids: Token ids of the prompt with the trigger, as the tokenizer gives them (with BOS/EOS).
        trigger_token_id: Id of the trigger word (``tokenizer.convert_tokens_to_ids("img")``).
        repeats: Copies of the class token.
        max_length: Pad with ``pad_token_id`` or truncate to this length (77 for SDXL), if given.
        pad_token_id: Needed when padding.
        bos_token_id: The start-of-text id, if ``input_ids`` begin with it (``tokenizer.bos_token_id``).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
    clean = [token for token in input_ids if token != trigger_token_id]
    triggers = [index for index, token in enumerate(input_ids) if token == trigger_token_id]
    if len(triggers) != 1:
        raise ValueError(
            f"the prompt must hold the trigger token exactly once, found it {len(triggers)} times. Fix: write "
            "the trigger word once, right after the class word ('a woman img ...')."
        )
    class_index = triggers[0] - 1
    if class_index < 0 or (bos_token_id is not None and input_ids[class_index] == bos_token_id):
        raise ValueError("the trigger word must follow the class word ('a woman img ...'), not start the prompt.")
    clean = clean[:class_index] + [clean[class_index]] * repeats + clean[class_index + 1 :]
    positions = list(range(class_index, class_index + repeats))
    if max_length is not None:
        if positions[-1] >= max_length:
            raise ValueError(
                f"the class token stands at position {positions[-1]}, beyond max_length={max_length}. "
                "Fix: move the class word and trigger nearer the start of the prompt."
            )
        if len(clean) > max_length:
            clean = clean[:max_length]
        elif len(clean) < max_length:
            if pad_token_id is None:
                raise ValueError("pad_token_id is needed to pad the ids to max_length.")
            clean = clean + [pad_token_id] * (max_length - len(clean))
    return ClassTokens(input_ids=clean, positions=positions)


@dataclass(frozen=True)
class ExpandedTokens:
    """Token ids with some class tokens repeated, and where each one's copies stand.

    Attributes:
        input_ids: The ids, padded or truncated to ``max_length`` when given.
        positions: Per class token, in the order they were given, the positions of its copies.
    """

    input_ids: list[int]
    positions: list[list[int]]


def expand_class_tokens(
    input_ids: Sequence[int],
    class_positions: Sequence[int],
    repeats: Sequence[int],
    *,
    max_length: int | None = None,
    pad_token_id: int | None = None,
) -> ExpandedTokens:
    """The class token at each of ``class_positions`` (in trigger-free ids) repeated ``repeats`` times.

    PhotoMaker v2's ``encode_prompt_with_trigger_word`` repeats the class token ``num_id_images x num_tokens``
    times (one copy per ID token), then truncates or pads to the tokenizer's length; each copy is text-encoded
    and then fused with its own ID token. This is the same for several class tokens of one prompt (one per
    character), each with its own count; ``find_class_tokens(..., repeats=r)`` is the case of one.

    Raises:
        ValueError: Bad positions or counts, or a copy would stand at or beyond ``max_length``.
    """
    positions, counts = list(class_positions), list(repeats)
    if len(positions) != len(counts):
        raise ValueError(f"got {len(positions)} class positions but {len(counts)} repeat counts.")
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(input_ids) for p in positions):
        raise ValueError(f"class positions must be indices into the {len(input_ids)} ids, got {positions}.")
    if len(set(positions)) != len(positions):
        raise ValueError(f"two characters share a class token at {positions}. Fix: give each its own class word.")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in counts):
        raise ValueError(f"repeats must be integers >= 1, got {counts}.")
    ids: list[int] = []
    spans: list[list[int]] = [[] for _ in positions]
    cursor = 0
    for k in sorted(range(len(positions)), key=positions.__getitem__):
        ids.extend(input_ids[cursor : positions[k]])
        spans[k] = list(range(len(ids), len(ids) + counts[k]))
        ids.extend([input_ids[positions[k]]] * counts[k])
        cursor = positions[k] + 1
    ids.extend(input_ids[cursor:])
    if max_length is not None:
        last = max(span[-1] for span in spans) if spans else -1
        if last >= max_length:
            raise ValueError(
                f"with its identity's {max(counts)} copies the class token would reach position {last}, beyond "
                f"max_length={max_length}. Fix: move the class word nearer the start of the prompt, or give fewer "
                "reference photos."
            )
        if len(ids) > max_length:
            ids = ids[:max_length]
        elif len(ids) < max_length:
            if pad_token_id is None:
                raise ValueError("pad_token_id is needed to pad the ids to max_length.")
            ids = ids + [pad_token_id] * (max_length - len(ids))
    return ExpandedTokens(input_ids=ids, positions=spans)


def triggered_prompts(story: Story, index: int, characters: Container[str]) -> dict[str, str]:
    """Character id -> frame ``index``'s prompt with the trigger word after that character's class word, for
    each character the frame names among ``characters`` (those with an identity): one prompt per character, so
    that each one's class token is found on its own. A frame whose text writes the description out rather than
    as ``{id}`` (a benchmark's verbatim prompt) gets the trigger after the class word's first occurrence in it."""
    prompts = {}
    plain = story.prompt(index)
    for character in story.frame_characters(index):
        if character.id in characters:
            marked = dataclasses.replace(
                character, description=insert_trigger_word(character.description, character.class_word)
            )
            others = tuple(marked if c.id == character.id else c for c in story.characters)
            prompt = dataclasses.replace(story, characters=others).prompt(index)
            prompts[character.id] = prompt if prompt != plain else insert_trigger_word(plain, character.class_word)
    return prompts


MERGE_STEP_CAP = 30
"""PhotoMaker's pipeline never starts the merge later than step 30."""


def merge_step(style_strength: float, steps: int) -> int:
    """The last step drawn from the text alone before the identity conditions the frame: PhotoMaker's
    ``start_merge_step = int(style_strength_ratio / 100 * num_inference_steps)``, capped at 30 as its pipeline
    caps it (the StoryDiffusion apps use the same)."""
    return min(int(style_strength * steps), MERGE_STEP_CAP)


@dataclass(frozen=True)
class MergedConditioning:
    """PhotoMaker's two conditionings of a frame: the text alone up to the merge step, the identity after it."""

    plain: Any
    merged: Any | None
    merge_step: int

    def at(self, step: int) -> Any:
        """The conditioning of 0-based step ``step`` (the identity's from ``merge_step + 1`` on, where there is one)."""
        return self.merged if self.merged is not None and step > self.merge_step else self.plain
