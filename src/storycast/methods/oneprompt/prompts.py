"""1Prompt1Story's single prompt: the identity prompt, the frame phrases after it, and the circular window a
long story is drawn through.

The authors (byliutao/1Prompt1Story@34e22ac, ``unet/utils.py``) draw a story of one subject from one prompt,
``id_prompt + " " + frame_1 + " " + ... + frame_N``; frame i expresses its own phrase and suppresses the others.
When the prompt would not fit CLIP's 77 tokens, frame i is drawn from a circular window of the phrases
``[i, i+1, ..., i+w-1] (mod N)`` (``circular_sliding_windows``), expressing the first one; ``w`` is
``min(window_length, the most frames that fit)`` (``movement_gen_story_slide_windows``).

What "fits" means is a choice (:data:`Counting`): the authors count whitespace-separated words of the identity
prompt and the first frames, and stop below 77 (``get_max_window_length``); a word is often two or more CLIP
tokens, so their prompts can pass 77 tokens and lose their last phrases to truncation. ``"tokens"`` (our
default) counts CLIP tokens, and takes the longest window for which *every* frame's prompt fits, so no phrase
is ever cut off. ``"words"`` is the authors' proxy, exactly.

Everything here is pure: strings and token ids in, strings and positions out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from storycast.story.model import Story, join_prompt
from storycast.story.phrases import frame_cast, frame_phrase

Counting = Literal["tokens", "words"]
WORD_LIMIT = 77
"""The authors' limit on the word count of the identity prompt and the frames (``get_max_window_length``)."""

# -- the story in one prompt ------------------------------------------------------------------------------


def identity_prompt(story: Story, cast: Sequence[str]) -> str:
    """The identity prompt of a cast: the style, then the characters' descriptions joined by "and".

    One character gives the authors' benchmark prompt, ``f"{style} {subject}"`` (``resource/gen_benchmark.py``);
    a cast of none gives the style alone.
    """
    descriptions = " and ".join(story.character(cid).description.strip() for cid in cast)
    return join_prompt(story.style, descriptions)


@dataclass(frozen=True)
class Chain:
    """Frames drawn as one 1Prompt1Story story: the frames of one cast, in story order.

    Attributes:
        cast: The characters every one of these frames names.
        identity: Their identity prompt.
        frames: Story frame indices.
        phrases: Each frame's phrase, in the same order.
    """

    cast: tuple[str, ...]
    identity: str
    frames: tuple[int, ...]
    phrases: tuple[str, ...]


def story_chains(story: Story) -> list[Chain]:
    """The story split by cast, in order of first appearance.

    The authors draw one subject (their issue #10 says several are weak); an identity prompt describes
    everyone in every frame drawn from it, so frames that name different characters cannot share one. Each
    cast (one character, a pair, nobody) becomes its own single-prompt story, with the descriptions of exactly
    the characters its frames show.
    """
    by_cast: dict[tuple[str, ...], list[int]] = {}
    for index in range(len(story)):
        by_cast.setdefault(frame_cast(story, index), []).append(index)
    return [
        Chain(cast, identity_prompt(story, cast), tuple(frames), tuple(frame_phrase(story, i) for i in frames))
        for cast, frames in by_cast.items()
    ]


def join_parts(identity: str, phrases: Sequence[str], suffix: str = "") -> str:
    """``identity phrase_1 ... phrase_n`` with single spaces (the authors' join), then the story's style suffix."""
    body = " ".join(part.strip() for part in (identity, *phrases) if part and part.strip())
    return join_prompt(body, "", suffix)


# -- the window ---------------------------------------------------------------------------------------------


def circular_windows(count: int, length: int) -> list[list[int]]:
    """Frame i's window: ``[i, i+1, ..., i+length-1] (mod count)`` (the authors' ``circular_sliding_windows``)."""
    return [[(i + j) % count for j in range(length)] for i in range(count)]


def words_window(identity: str, phrases: Sequence[str], suffix: str = "", limit: int = WORD_LIMIT) -> int:
    """The authors' most frames that fit (``get_max_window_length``): the identity prompt and the first frames,
    in story order, while their whitespace word count stays below ``limit``; the suffix's words count too."""
    words = len(identity.split()) + len(suffix.split())
    fitting = 0
    for phrase in phrases:
        words += len(phrase.split())
        if words >= limit:
            break
        fitting += 1
    return fitting


def tokens_window(identity_tokens: int, phrase_tokens: Sequence[int], suffix_tokens: int, limit: int) -> int:
    """The most frames w such that the prompt of *every* circular window of w frames fits ``limit`` CLIP tokens
    (start and end tokens included); 0 when no frame fits beside the identity prompt.

    Counts are the parts' own token counts: CLIP's tokenizer splits text into words before its BPE, so the
    prompt's tokens are its parts' tokens, one after the other.
    """
    count = len(phrase_tokens)
    fixed = 2 + identity_tokens + suffix_tokens
    for length in range(count, 0, -1):
        windows = [list(range(count))] if length == count else circular_windows(count, length)
        if all(fixed + sum(phrase_tokens[i] for i in window) <= limit for window in windows):
            return length
    return 0


@dataclass(frozen=True)
class FramePrompt:
    """The prompt one frame is drawn from.

    Attributes:
        text: The single prompt (identity prompt, phrases, style suffix).
        identity: The identity prompt it starts with.
        phrases: The frame phrases in it, in prompt order.
        express: Which of ``phrases`` is this frame's.
        frames: The story frame of each phrase.
        window: Frames per prompt: ``len(phrases)``; less than the chain's frames when windowed.
    """

    text: str
    identity: str
    phrases: tuple[str, ...]
    express: int
    frames: tuple[int, ...]
    window: int

    @property
    def suppress(self) -> tuple[int, ...]:
        """The other phrases, in prompt order (the order the authors suppress them in)."""
        return tuple(i for i in range(len(self.phrases)) if i != self.express)


def chain_prompts(
    chain: Chain,
    *,
    window_length: int,
    counting: Counting,
    token_count: Callable[[str], int],
    limit: int,
    suffix: str = "",
) -> list[FramePrompt]:
    """Each frame's prompt, as ``movement_gen_story_slide_windows`` builds it.

    With w = min(window_length, the most frames that fit) below the chain's length, frame i is drawn from its
    circular window and expresses its first phrase; otherwise every frame is drawn from the whole prompt and
    expresses its own. w is at least 1 (a frame whose phrase does not fit beside the identity prompt is
    drawn from a truncated prompt; :func:`overlong_frames` finds those).

    Args:
        chain: The frames.
        window_length: The longest window (the authors' 10).
        counting: What fits: "tokens" (CLIP tokens, every window) or "words" (the authors' word count).
        token_count: CLIP tokens of a text, without start and end tokens.
        limit: Tokens a prompt holds, start and end included (77).
        suffix: The story's style suffix, after the phrases.
    """
    count = len(chain.phrases)
    if counting == "words":
        fitting = words_window(chain.identity, chain.phrases, suffix)
    else:
        fitting = tokens_window(
            token_count(chain.identity), [token_count(p) for p in chain.phrases], token_count(suffix), limit
        )
    window = max(1, min(window_length, fitting))
    prompts = []
    for position in range(count):
        if window < count:
            order = [(position + j) % count for j in range(window)]
            express = 0
        else:
            order = list(range(count))
            express = position
        phrases = tuple(chain.phrases[i] for i in order)
        prompts.append(
            FramePrompt(
                text=join_parts(chain.identity, phrases, suffix),
                identity=chain.identity,
                phrases=phrases,
                express=express,
                frames=tuple(chain.frames[i] for i in order),
                window=len(order),
            )
        )
    return prompts


def story_prompts(
    story: Story, *, window_length: int, counting: Counting, token_count: Callable[[str], int], limit: int
) -> dict[int, FramePrompt]:
    """Every frame's prompt: each cast's chain (:func:`story_chains`) drawn through its window."""
    prompts: dict[int, FramePrompt] = {}
    for chain in story_chains(story):
        built = chain_prompts(
            chain,
            window_length=window_length,
            counting=counting,
            token_count=token_count,
            limit=limit,
            suffix=story.style_suffix,
        )
        prompts.update(zip(chain.frames, built, strict=True))
    return prompts


# -- tokens -------------------------------------------------------------------------------------------------


def content_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` without start and end tokens, untruncated."""
    if not text.strip():
        return []
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """``text -> its CLIP token count`` (start and end tokens not counted) for :func:`chain_prompts`."""
    return lambda text: len(content_ids(tokenizer, text))


def find_sublist(haystack: Sequence[int], needle: Sequence[int]) -> int:
    """First index of ``needle`` in ``haystack``, -1 when absent (the authors' ``find_sublist_index``)."""
    for start in range(len(haystack) - len(needle) + 1):
        if list(haystack[start : start + len(needle)]) == list(needle):
            return start
    return -1


@dataclass(frozen=True)
class PromptTokens:
    """Where a frame prompt's parts sit among its encoded tokens (tokenizer 1; SDXL's two share positions).

    Attributes:
        phrases: Token positions of each phrase; empty when the phrase is empty or cut off by the limit.
        eot: Position of the end token; ``eot .. length-1`` are the end token and the padding after it.
        length: Tokens the text encoders see (77).
    """

    phrases: tuple[tuple[int, ...], ...]
    eot: int
    length: int

    @property
    def end_positions(self) -> tuple[int, ...]:
        """The end token and the padding (the authors' "EOT" positions, every ``<|endoftext|>`` of CLIP-L)."""
        return tuple(range(self.eot, self.length))


def prompt_tokens(tokenizer: Any, prompt: FramePrompt) -> PromptTokens:
    """Token positions of ``prompt``'s phrases in its encoding.

    A phrase's positions follow from the parts before it (the identity prompt, the earlier phrases); they are
    checked against the encoding, and found by the first occurrence of the phrase's tokens, as the authors
    find every phrase (``swr_single_prompt_embeds``), should the check ever fail. The two agree unless a phrase
    repeats earlier text, where the authors would reweight the earlier occurrence. A phrase not wholly within
    the limit has no positions (the authors' search does not find it either).
    """
    length = tokenizer.model_max_length
    ids = list(tokenizer(prompt.text, truncation=True, max_length=length).input_ids)
    eot = len(ids) - 1
    start = 1 + len(content_ids(tokenizer, prompt.identity))
    spans = []
    for phrase in prompt.phrases:
        needle = content_ids(tokenizer, phrase)
        stop = start + len(needle)
        if needle and stop <= eot and ids[start:stop] == needle:
            spans.append(tuple(range(start, stop)))
        else:
            found = find_sublist(ids[1:eot], needle) if needle else -1
            spans.append(tuple(range(found + 1, found + 1 + len(needle))) if found >= 0 else ())
        start = stop
    return PromptTokens(tuple(spans), eot, length)


def identity_positions(tokenizer: Any, identity: str) -> tuple[int, ...]:
    """The identity prompt's tokens IPCA keeps: its start token and its words (its end token and padding are
    dropped), as the authors' ``apply_embeds_mask`` keeps them; positions in its own encoding."""
    words = len(content_ids(tokenizer, identity))
    return tuple(range(min(1 + words, tokenizer.model_max_length - 1)))


def overlong_frames(tokenizer: Any, story: Story) -> dict[int, int]:
    """Frames whose phrase does not fit beside their identity prompt even in a window of one: frame index ->
    the tokens that prompt needs (start and end tokens included), for those above the limit."""
    found = {}
    for chain in story_chains(story):
        identity = len(content_ids(tokenizer, chain.identity))
        for index, phrase in zip(chain.frames, chain.phrases, strict=True):
            needed = 2 + identity + len(content_ids(tokenizer, phrase))
            if needed > tokenizer.model_max_length:
                found[index] = needed
    return found
