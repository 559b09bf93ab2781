"""GroundingDINO + SAM masks: the authors' way to locate characters (IdentityStory ``utils/layout_extraction.py``,
``predict_mask``, called from ``main.py:run_injection_for_prompt``).

For one frame: GroundingDINO finds boxes for the characters' class words ("woman") in the stage-1 image; for each
class word the n best boxes by score are kept, n = the number of characters with that word; SAM turns each kept
box into a mask at image resolution. Fewer boxes than characters is a failure (:class:`MaskNotFoundError`); the
caller decides whether to redraw the frame with another seed (the authors add 3533 to the seed, without bound).

Official settings: GroundingDINO Swin-B (``IDEA-Research/grounding-dino-base``), box threshold 0.3 and text
threshold 0.25; SAM ViT-H (``facebook/sam-vit-huge``) with one mask per box (``multimask_output=False``), mask
logits > 0; both in fp32. What the authors do, step by step:

- one GroundingDINO pass per distinct class word, the caption being that word, lower-cased and ended with '.'
  (GroundingDINO's ``preprocess_caption``): "woman.";
- a box counts when its highest token probability (over the whole caption) is above the box threshold; the
  phrase GroundingDINO reads off with the text threshold is computed but never used to select boxes;
- the kept boxes are ``torch.topk(scores, n)``: best first, so the first character with that class word (in the
  frame's order) gets the best box, the second the next one;
- one SAM pass per class word on the same image; the masks are not cleaned here (see ``ops.clean_masks``).

Here one SAM pass segments all boxes of a frame (the image embedding is the same), and two options go beyond the
authors: ``passes="joint"`` detects all class words in one GroundingDINO pass ("man. woman.", a box then belongs
to the word whose tokens score highest, if above the text threshold), and ``order="left-to-right"`` hands boxes
of one class word out from left to right instead of by score.

Models load lazily, once per provider, through transformers (``GroundingDinoForObjectDetection``, ``SamModel``)
from a Hub id or a local folder; the image processors are pinned to their PIL backend, which resizes as the
authors' pipelines do (PIL bilinear: shorter side 800 / longer side at most 1333 for GroundingDINO, longer side
1024 for SAM).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from storycast.errors import SettingsError
from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError
from storycast.masks.settings import BOX_THRESHOLD, DETECTOR_ID, SEGMENTER_ID, TEXT_THRESHOLD
from storycast.models.checkpoints import load_checkpoint
from storycast.utils.torch_utils import DEVICE_NAMES, DTYPE_NAMES, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

T = TypeVar("T")

PASSES = ("per-word", "joint")
ORDERS = ("score", "left-to-right")
OTHER_PROVIDERS_HINT = "or use the 'attention' or 'user' mask provider"


@dataclass(frozen=True)
class GroundedSamSettings:
    """Settings of the GroundingDINO + SAM mask provider; defaults are the authors'.

    Attributes:
        detector: GroundingDINO checkpoint: Hub id or local folder (official Swin-B,
            ``IDEA-Research/grounding-dino-base``).
        segmenter: SAM checkpoint: Hub id or local folder (official ViT-H, ``facebook/sam-vit-huge``).
        box_threshold: A box counts when its best token probability is above this (official 0.3).
        text_threshold: With ``passes="joint"``, a box belongs to a class word only when that word's best token
            probability is above this (official 0.25; unused by the authors' one-word captions).
        passes: "per-word" (official: one GroundingDINO pass per distinct class word) or "joint" (one pass for
            all class words of the frame, "man. woman.").
        order: How characters sharing a class word get that word's n best boxes: "score" (official: best box to
            the first character in the frame's order) or "left-to-right" (leftmost box centre to the first).
        multimask: False (official): SAM predicts one mask per box. True: SAM predicts three and the one with
            the highest predicted IoU is kept.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        dtype: "fp32" (official), "fp16", "bf16" or "auto" (fp16 on CUDA).
        local_files_only: Never reach the network for Hub ids (the Hugging Face cache still counts).
        offload_idle: Keep the models in CPU memory between frames and on ``device`` only while they run (frees
            about 3.4 GB of GPU memory in fp32 for the UNet's passes when they share its GPU).
    """

    detector: str = DETECTOR_ID
    segmenter: str = SEGMENTER_ID
    box_threshold: float = BOX_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD
    passes: str = "per-word"
    order: str = "score"
    multimask: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    local_files_only: bool = False
    offload_idle: bool = False

    def __post_init__(self) -> None:
        for name in ("detector", "segmenter"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
            elif not isinstance(value, str) or not value.strip():
                raise SettingsError(
                    f"{name} must be a Hub id or a folder, got {value!r}. "
                    f"Fix: leave it out for the official checkpoint, or give a local folder."
                )
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise SettingsError(
                    f"{name} must be a number in [0, 1], got {value!r}. "
                    f"Fix: use a probability (official {BOX_THRESHOLD if name == 'box_threshold' else TEXT_THRESHOLD})."
                )
        for name, allowed in (("passes", PASSES), ("order", ORDERS), ("dtype", DTYPE_NAMES)):
            if getattr(self, name) not in allowed:
                raise SettingsError(
                    f"{name} '{getattr(self, name)}' is not known. Fix: use one of {', '.join(allowed)}."
                )
        if not isinstance(self.device, str) or self.device.split(":")[0] not in DEVICE_NAMES:
            raise SettingsError(f"device '{self.device}' is not known. Fix: use one of auto, cpu, cuda, cuda:N, mps.")
        if not all(isinstance(v, bool) for v in (self.multimask, self.local_files_only, self.offload_idle)):
            raise SettingsError("multimask, local_files_only and offload_idle must be true or false.")


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: caption, detections, box assignment.
# ----------------------------------------------------------------------------------------------------------------


def class_words(characters: Sequence[CharacterQuery]) -> list[str]:
    """The distinct class words of ``characters``, lower-cased and stripped, in order of first appearance."""
    words: list[str] = []
    for character in characters:
        word = normalize_word(character.class_word, character.id)
        if word not in words:
            words.append(word)
    return words


def normalize_word(word: str, character_id: str = "") -> str:
    """A class word as GroundingDINO reads it: lower-cased, stripped, inner spaces collapsed (no '.')."""
    who = f" of character '{character_id}'" if character_id else ""
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"the class word{who} is empty. Fix: give the character a class word such as 'woman'.")
    word = " ".join(word.lower().split())
    if "." in word:
        raise ValueError(
            f"the class word{who} '{word}' contains '.', which GroundingDINO reads as a separator. Fix: remove it."
        )
    return word


def build_caption(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """GroundingDINO caption for ``words`` and the character span of each word in it.

    Each word is followed by '.', words are separated by a space: ``["man", "woman"] -> "man. woman."`` (GroundingDINO's
    ``preprocess_caption`` for one word, transformers' merged candidate labels for several). Spans are ``(start, end)``
    character offsets, end excluded.
    """
    if not words:
        raise ValueError("words is empty: give at least one class word.")
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for word in words:
        word = normalize_word(word)
        if parts:
            position += 1  # the space
        spans.append((position, position + len(word)))
        parts.append(word + ".")
        position += len(word) + 1
    return " ".join(parts), spans


def word_token_positions(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions of each word, from a tokenizer's ``offset_mapping`` and the words' character spans.

    A token belongs to a word when its characters lie inside the word's span; special tokens ((0, 0) offsets) belong
    to none. Raises ``ValueError`` when a word gets no token (its text was truncated away).
    """
    positions: list[list[int]] = []
    for start, end in char_spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        if not inside:
            raise ValueError(
                f"no token covers characters {start}..{end} of the caption: the caption is longer than the "
                "detector's text length. Fix: use fewer or shorter class words."
            )
        positions.append(inside)
    return positions


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image, each with its score and the class word it was found for.

    Attributes:
        boxes: (N, 4) float32, ``(x0, y0, x1, y1)`` in pixels of the image.
        scores: (N,) float32, the box's best token probability (GroundingDINO's "logit" in ``predict``).
        words: N class words.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.words)
        if self.boxes.shape != (count, 4) or self.scores.shape != (count,):
            raise ValueError(
                f"Detections needs boxes (N, 4), scores (N,) and N words; got boxes {tuple(self.boxes.shape)}, "
                f"scores {tuple(self.scores.shape)} and {count} words."
            )

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All detections of ``parts`` in one, in order (e.g. the per-word passes of a frame)."""
        if not parts:
            return cls(torch.zeros(0, 4), torch.zeros(0), ())
        return cls(
            torch.cat([part.boxes for part in parts]),
            torch.cat([part.scores for part in parts]),
            tuple(word for part in parts for word in part.words),
        )


def cxcywh_to_xyxy(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) normalised ``(cx, cy, w, h)`` -> pixel ``(x0, y0, x1, y1)`` for an image of ``(height, width)``.

    The authors' ``box_cxcywh_to_xyxy(boxes) * [w, h, w, h]``; no clamping to the image (neither do they).
    """
    height, width = image_size
    cx, cy, w, h = boxes.float().unbind(-1)
    corners = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    return corners * torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)


def select_detections(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    words: Sequence[str],
    image_size: tuple[int, int],
    *,
    word_tokens: Sequence[Sequence[int]] = (),
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
) -> Detections:
    """The boxes of one GroundingDINO output that count, each with its score and class word.

    Args:
        logits: (Q, L) token logits of the Q queries (``outputs.logits[0]``); padding positions are -inf.
        boxes: (Q, 4) normalised ``(cx, cy, w, h)`` (``outputs.pred_boxes[0]``).
        words: The class words of the caption, in caption order.
        image_size: ``(height, width)`` of the image, to put the boxes in pixels.
        word_tokens: Token positions of each word (:func:`word_token_positions`); needed for several words.
        box_threshold: A box counts when its best token probability over the caption is above this (official 0.3;
            ``predict``'s ``logits.max(dim=1) > box_threshold``, which is also transformers' ``threshold``).
        text_threshold: With several words, a box belongs to the word whose tokens have the highest probability,
            and only when that probability is above this (official 0.25, GroundingDINO's phrase rule).

    With one word every counted box is that word's, whatever its phrase: the authors' behaviour.
    """
    if logits.ndim != 2 or boxes.shape != (logits.shape[0], 4):
        raise ValueError(
            f"logits must be (Q, L) and boxes (Q, 4); got {tuple(logits.shape)} and {tuple(boxes.shape)}."
        )
    words = tuple(words)
    if not words:
        raise ValueError("words is empty: give the class words of the caption.")
    probs = logits.detach().float().sigmoid()
    scores = probs.max(dim=-1).values
    keep = scores > box_threshold
    if len(words) == 1:
        labels = [words[0]] * int(keep.sum())
    else:
        if len(word_tokens) != len(words) or any(len(tokens) == 0 for tokens in word_tokens):
            raise ValueError(f"word_tokens must give token positions for each of the {len(words)} words.")
        word_scores = torch.stack([probs[:, list(tokens)].max(dim=-1).values for tokens in word_tokens], dim=-1)
        best_score, best_word = word_scores.max(dim=-1)
        keep &= best_score > text_threshold
        labels = [words[i] for i in best_word[keep].tolist()]
    return Detections(cxcywh_to_xyxy(boxes[keep], image_size).cpu(), scores[keep].cpu(), tuple(labels))


def assign_boxes(
    detections: Detections,
    characters: Sequence[CharacterQuery],
    *,
    frame_index: int = 0,
    order: str = "score",
    box_threshold: float | None = None,
) -> dict[str, torch.Tensor]:
    """Character id -> its (4,) box: for each class word, the n best boxes by score, n = characters with that word.

    Boxes are ranked by score, best first (ties keep detection order), as the authors' ``torch.topk``. Characters
    sharing a class word take that word's n best boxes in the frame's order: the best box first (``order="score"``,
    official) or the leftmost box centre first (``order="left-to-right"``; ties broken by centre height, then score).

    Raises:
        MaskNotFoundError: A class word has fewer boxes than characters; names the frame (1-based), the first
            character left without a box, the word, and the fixes.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}.")
    ids = [character.id for character in characters]
    if len(set(ids)) != len(ids):
        raise ValueError(f"character ids must be unique within a frame, got {ids}.")
    assigned: dict[str, torch.Tensor] = {}
    for word in class_words(characters):
        group = [c for c in characters if normalize_word(c.class_word, c.id) == word]
        candidates = [i for i, found in enumerate(detections.words) if found == word]
        ranked = sorted(candidates, key=lambda i: -float(detections.scores[i]))  # stable: ties keep detection order
        if len(ranked) < len(group):
            raise _not_enough_boxes(word, group, len(ranked), frame_index, box_threshold)
        chosen = ranked[: len(group)]
        if order == "left-to-right":
            chosen = sorted(chosen, key=lambda i: _centre_key(detections.boxes[i]))
        for character, index in zip(group, chosen, strict=True):
            assigned[character.id] = detections.boxes[index].clone()
    return {character_id: assigned[character_id] for character_id in ids}


def _centre_key(box: torch.Tensor) -> tuple[float, float]:
    x0, y0, x1, y1 = box.tolist()
    return (x0 + x1) / 2, (y0 + y1) / 2


def _not_enough_boxes(
    word: str, group: Sequence[CharacterQuery], found: int, frame_index: int, box_threshold: float | None
) -> MaskNotFoundError:
    missing = group[found]
    threshold = f" above the box threshold {box_threshold:g}" if box_threshold is not None else ""
    boxes = f"{found} box" if found == 1 else f"{found} boxes"
    need = (
        f"{len(group)} characters need one ({', '.join(repr(c.id) for c in group)})"
        if len(group) > 1
        else f"character '{missing.id}' needs one"
    )
    lower = "lower box_threshold" + (f" (now {box_threshold:g})" if box_threshold is not None else "")
    return MaskNotFoundError(
        f"frame {frame_index + 1}: GroundingDINO found {boxes} for '{word}'{threshold}, but {need}; "
        f"'{missing.id}' (class word '{word}') has none. "
        f"Fix: draw the frame again with another seed, {lower}, {OTHER_PROVIDERS_HINT}.",
        frame_index=frame_index,
        character_id=missing.id,
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GroundedSamModels:
    """The four parts the provider runs: GroundingDINO and its processor, SAM and its processor."""

    detector: Any
    detector_processor: Any
    segmenter: Any
    segmenter_processor: Any


def load_grounded_sam(settings: GroundedSamSettings) -> GroundedSamModels:
    """Load GroundingDINO and SAM from ``settings`` (Hub ids or folders), in eval mode on its device and dtype.

    Raises:
        MissingWeightsError: A checkpoint is neither on disk nor downloadable; the message names the setting.
        ModelLoadError: A folder exists but does not hold a loadable checkpoint.
    """
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SamModel,
        SamProcessor,
    )

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)

    def load_detector(source: str, local_only: bool) -> tuple[Any, Any]:
        model = GroundingDinoForObjectDetection.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        processor = GroundingDinoProcessor(
            image_processor=_pil_image_processor(source, local_only), tokenizer=tokenizer
        )
        return model, processor

    def load_segmenter(source: str, local_only: bool) -> tuple[Any, Any]:
        model = SamModel.from_pretrained(source, local_files_only=local_only)
        return model, SamProcessor(image_processor=_pil_image_processor(source, local_only))

    detector, detector_processor = _load_checkpoint(
        load_detector,
        settings.detector,
        what="GroundingDINO",
        setting="detector",
        local_files_only=settings.local_files_only,
    )
    segmenter, segmenter_processor = _load_checkpoint(
        load_segmenter, settings.segmenter, what="SAM", setting="segmenter", local_files_only=settings.local_files_only
    )
    logger.info("Loaded GroundingDINO '%s' and SAM '%s' on %s.", settings.detector, settings.segmenter, device)
    return GroundedSamModels(
        detector.to(device=device, dtype=dtype).eval(),
        detector_processor,
        segmenter.to(device=device, dtype=dtype).eval(),
        segmenter_processor,
    )


def _pil_image_processor(source: str, local_files_only: bool) -> Any:
    """``AutoImageProcessor`` pinned to the PIL backend (transformers 5: ``backend="pil"``; 4: the slow one)."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only, **backend)


def _load_checkpoint(
    load: Callable[[str, bool], T], source: str, *, what: str, setting: str, local_files_only: bool
) -> T:
    """``load(source, local_files_only)``, with 'not there' turned into an error that names ``setting``."""
    return load_checkpoint(
        load, source, what=what, point_at=f"set the {setting} setting to", local_files_only=local_files_only
    )


# ----------------------------------------------------------------------------------------------------------------
# The provider.
# ----------------------------------------------------------------------------------------------------------------


class GroundedSamMasks:
    """Mask provider "grounded-sam": GroundingDINO boxes per class word, SAM masks per box (the authors' choice).

    Returns, for every character asked, a bool (H, W) mask at the image's resolution on the CPU. Raw SAM masks: they
    may overlap; the pipeline cleans them (``storycast.masks.ops.clean_masks``).

    Example::

        provider = GroundedSamMasks(GroundedSamSettings(device="cuda"))
        masks = provider(MaskInputs(image, [CharacterQuery("anna", "woman")], frame_index=3))
    """

    name = "grounded-sam"

    def __init__(self, settings: GroundedSamSettings | None = None):
        self.settings = settings or GroundedSamSettings()
        self._models: GroundedSamModels | None = None

    @classmethod
    def from_models(
        cls,
        detector: Any,
        detector_processor: Any,
        segmenter: Any,
        segmenter_processor: Any,
        settings: GroundedSamSettings | None = None,
    ) -> GroundedSamMasks:
        """A provider over already built models and processors, used as they are (device and dtype included);
        ``settings.detector``, ``segmenter``, ``device``, ``dtype`` and ``local_files_only`` are then unused."""
        provider = cls(settings)
        provider._models = GroundedSamModels(detector, detector_processor, segmenter, segmenter_processor)
        return provider

    @property
    def models(self) -> GroundedSamModels:
        """The models, loaded on first use."""
        if self._models is None:
            self._models = load_grounded_sam(self.settings)
        return self._models

    def __call__(self, inputs: MaskInputs) -> dict[str, torch.Tensor]:
        characters = list(inputs.characters)
        if not characters:
            return {}
        with self._resident():
            return self._masks(inputs, characters)

    @contextlib.contextmanager
    def _resident(self) -> Iterator[None]:
        """The models on their device inside the block; with ``offload_idle``, in CPU memory again after it."""
        if not self.settings.offload_idle:
            yield
            return
        device = resolve_device(self.settings.device)
        models = self.models
        for model in (models.detector, models.segmenter):
            model.to(device)
        try:
            yield
        finally:
            for model in (models.detector, models.segmenter):
                model.to("cpu")

    def _masks(self, inputs: MaskInputs, characters: list[CharacterQuery]) -> dict[str, torch.Tensor]:
        image = inputs.image.convert("RGB")
        detections = self.detect(image, class_words(characters))
        logger.debug(
            "frame %d: %d box(es): %s",
            inputs.frame_index + 1,
            len(detections),
            ", ".join(f"{w} {s:.2f}" for w, s in zip(detections.words, detections.scores.tolist(), strict=True)),
        )
        boxes = assign_boxes(
            detections,
            characters,
            frame_index=inputs.frame_index,
            order=self.settings.order,
            box_threshold=self.settings.box_threshold,
        )
        masks = self.segment(image, torch.stack(list(boxes.values())))
        result = dict(zip(boxes, masks, strict=True))
        for character in characters:
            if not result[character.id].any():
                raise MaskNotFoundError(
                    f"frame {inputs.frame_index + 1}: SAM gave an empty mask for '{character.id}' (class word "
                    f"'{character.class_word}', box {[round(v) for v in boxes[character.id].tolist()]}). "
                    f"Fix: draw the frame again with another seed, {OTHER_PROVIDERS_HINT}.",
                    frame_index=inputs.frame_index,
                    character_id=character.id,
                )
        return result

    @torch.no_grad()
    def detect(self, image: Image.Image, words: Sequence[str]) -> Detections:
        """GroundingDINO detections of ``words`` in ``image``: one pass per word (official) or one joint pass."""
        words = [normalize_word(word) for word in words]
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.settings.passes == "joint":
            return self._detect_caption(image, words)
        return Detections.concat([self._detect_caption(image, [word]) for word in words])

    def _detect_caption(self, image: Image.Image, words: Sequence[str]) -> Detections:
        model, processor = self.models.detector, self.models.detector_processor
        caption, spans = build_caption(words)
        inputs = processor(images=image, text=caption, return_tensors="pt")
        inputs = {
            k: v.to(model.device, dtype=model.dtype) if v.is_floating_point() else v.to(model.device)
            for k, v in inputs.items()
        }
        outputs = model(**inputs)
        word_tokens: list[list[int]] = []
        if len(words) > 1:
            offsets = processor.tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
            word_tokens = word_token_positions(offsets, spans)
        return select_detections(
            outputs.logits[0],
            outputs.pred_boxes[0],
            words,
            (image.height, image.width),
            word_tokens=word_tokens,
            box_threshold=self.settings.box_threshold,
            text_threshold=self.settings.text_threshold,
        )

    @torch.no_grad()
    def segment(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        """(K, H, W) bool SAM masks of the K pixel boxes ``(x0, y0, x1, y1)``, at the image's resolution.

        One image embedding for all boxes; mask logits upsampled as SAM does (bilinear to the padded input size,
        crop, bilinear to the image) and thresholded at 0 (``SamPredictor``'s ``mask_threshold``).
        """
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(boxes) == 0:
            raise ValueError(f"boxes must have shape (K, 4) with K >= 1, got {tuple(boxes.shape)}.")
        model, processor = self.models.segmenter, self.models.segmenter_processor
        image = image if image.mode == "RGB" else image.convert("RGB")
        inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        outputs = model(
            pixel_values=inputs["pixel_values"].to(model.device, dtype=model.dtype),
            input_boxes=inputs["input_boxes"].to(model.device, dtype=torch.float32),
            multimask_output=self.settings.multimask,
        )
        logits = outputs.pred_masks[0]  # (K, M, h, w)
        if self.settings.multimask:
            best = outputs.iou_scores[0].argmax(dim=-1)  # (K,)
            logits = logits[torch.arange(len(best), device=best.device), best][:, None]
        masks = processor.post_process_masks(
            [logits.float().cpu()], inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        return masks[:, 0].to(torch.bool)
