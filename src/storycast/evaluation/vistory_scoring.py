"""ViStoryBench's character metrics for one run: GroundingDINO crops, per-character encoders, matching, aggregation.

The driver follows ``CIDSEvaluator.evaluate`` (``ViStoryBench/vistorybench`` @ 514cc31,
``vistorybench/bench/content/cids_evaluator.py`` lines 628-1086); the formulas are in
:mod:`storycast.evaluation.vistory_metrics`. In order:

1. references: each reference image of each character goes through GroundingDINO with the caption 'character';
   the best box is cut out. The crops are encoded (a ``realistic_human`` by the face ensemble, any other tag by
   CLIP); if no crop gives features the whole images are encoded instead, and a character with none is an error
   (their assert). The first usable reference and its mirror image are encoded for the copy-paste degree;
2. each shot with characters: every box above the threshold is cut out (best first) and encoded with each of the
   shot's characters' encoders; a character's score for a crop is its best similarity over its references; the
   Hungarian method assigns crops to characters; OCCM compares the number of crops with the number of characters;
3. per character (all the story's characters): cross = mean similarity of its matched crops to its references,
   self = mean over pairs of its crops (1 for one crop); (0, 0) when never matched. The story's values are the
   means over characters and shots; :mod:`storycast.evaluation.report` averages stories as their
   ``manager._aggregate_story_metrics_mean`` does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from storycast.errors import SettingsError
from storycast.evaluation import vistory_metrics as V
from storycast.evaluation.metrics import MetricInputError

if TYPE_CHECKING:
    from PIL import Image

    from storycast.evaluation.runfolders import EvalRun

VISTORY_ROLES = ("detector", "arcface", "adaface", "facenet")
"""Extractors of these metrics besides 'clip' (the preset's CLIP ViT-L/14, shared with CLIP-T)."""
FACE_NETS = ("adaface", "facenet")
HUMAN_TAG = "realistic_human"
"""The tag whose characters are encoded by faces (``_get_encoder_name``); every other tag uses CLIP."""
FACE_SIZE = 112

Detect = Callable[["Image.Image"], tuple[torch.Tensor, torch.Tensor]]
"""Image -> (normalised (cx, cy, w, h) boxes (N, 4), scores (N,)) above the box threshold."""
Encode = Callable[[Sequence["Image.Image"], bool], list["V.Features | None"]]
"""(crops, human) -> per crop its features, or None (a human crop without a face)."""
JudgeCharacter = Callable[[int, str, "Image.Image"], int]
"""(shot index, character id, the crop matched to it) -> the judge's 0-4 score of the character's action."""


@dataclass(frozen=True)
class CharacterRef:
    """One character as the metrics need it: its id, whether it is a realistic human, its reference images."""

    id: str
    human: bool
    references: tuple[Path, ...]


@dataclass
class VistoryScores:
    """A story's values (metric -> value), per-frame values and the details behind them."""

    values: dict[str, float]
    frames: list[dict[str, float]]
    details: dict[str, Any] = field(default_factory=dict)


def _open(path: Path) -> Image.Image:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _cut(image: Image.Image, boxes: torch.Tensor) -> list[tuple[int, Image.Image]]:
    return [(i, image.crop(tuple(box))) for i, box in V.crop_boxes(boxes, image.width, image.height)]


def _reference_features(
    character: CharacterRef, detect: Detect, encode: Encode
) -> tuple[list[V.Features], V.Features, V.Features]:
    """(reference features, copy-paste reference, its mirror) of one character (lines 662-746)."""
    from PIL import ImageOps

    images = [_open(p) for p in character.references]
    crops = []
    for image in images:
        boxes, scores = detect(image)
        if len(scores):
            cut = _cut(image, boxes[scores.argmax()].reshape(1, 4))
            if cut:
                crops.append(cut[0][1])
    used = crops
    features = encode(crops, character.human) if crops else []
    if not any(f is not None for f in features):
        used, features = images, encode(images, character.human)  # their fallback: the whole reference images
    valid = [i for i, f in enumerate(features) if f is not None]
    if not valid:
        raise MetricInputError(
            f"character '{character.id}': no reference image gives features "
            f"({'no face found' if character.human else 'no image'}), so CIDS cannot score it (the benchmark stops "
            f"here too). Fix: give the character a reference image that shows it."
        )
    primary = used[valid[0]]
    original, mirrored = encode([primary, ImageOps.mirror(primary)], character.human)
    original, mirrored = original or mirrored, mirrored or original  # one of two found: used twice, as theirs
    return [features[i] for i in valid], original, mirrored


def score_vistory_story(
    characters: Sequence[CharacterRef],
    shots: Sequence[Sequence[str]],
    frames: Sequence[Image.Image],
    *,
    detect: Detect,
    encode: Encode,
    method: str = V.DEFAULT_ENSEMBLE,
    weights: Mapping[str, float] | None = None,
    judge_character: JudgeCharacter | None = None,
) -> VistoryScores:
    """CIDS cross / self, OCCM and copy-paste of one story; with ``judge_character``, its single-character action
    too (``cids_evaluator.py`` lines 945-1002, 1077-1078: each matched character's crop judged against the shot's
    script; shot = ``int(round(mean))`` over its matched characters, 0 with none; story the same over those shots).

    Args:
        characters: Every character of the story.
        shots: Per frame, the ids of the characters it should show.
        frames: The frames, in story order.
        detect, encode: GroundingDINO and the per-character encoders (see :data:`Detect`, :data:`Encode`).
        method, weights: The face ensemble (:func:`vistory_metrics.ensemble_similarity`).
        judge_character: The prompt-alignment judge of one matched crop (:data:`JudgeCharacter`); None: the
            single-character action is not computed.
    """
    if len(shots) != len(frames):
        raise MetricInputError(f"{len(shots)} shots for {len(frames)} frames.")
    ensemble = {"method": method, "weights": weights}
    by_id = {c.id: c for c in characters}
    refs = {c.id: _reference_features(c, detect, encode) for c in characters}
    matched: dict[str, list[V.Features]] = {c.id: [] for c in characters}
    per_frame: list[dict[str, float]] = [{} for _ in frames]
    shot_details: list[dict[str, Any]] = []
    occm_scores: list[float] = []
    judged: dict[int, dict[str, int]] = {}
    for index, (names, frame) in enumerate(zip(shots, frames, strict=True)):
        if not names:
            shot_details.append({"characters": [], "boxes": 0})  # their `continue`: no OCCM for an empty shot
            continue
        boxes, scores = detect(frame)
        order = torch.sort(scores, descending=True).indices
        crops = [crop for _, crop in _cut(frame, boxes[order])]
        matches: list[int | None] = [None] * len(names)
        rows: list[torch.Tensor | None] = [None] * len(names)
        encoded: dict[bool, list[V.Features | None]] = {}
        if crops:
            table = torch.zeros(len(names), len(crops))
            valid = torch.zeros(len(names), len(crops), dtype=torch.bool)
            for r, name in enumerate(names):
                human = by_id[name].human
                if human not in encoded:  # one encoder per kind: the same crops give the same features
                    encoded[human] = encode(crops, human)
                cols = [k for k, f in enumerate(encoded[human]) if f is not None]
                if cols:
                    sim = V.similarity_matrix([encoded[human][k] for k in cols], refs[name][0], **ensemble)
                    table[r, cols] = sim.max(dim=1).values.float()
                    valid[r, cols] = True
                    rows[r] = torch.full((len(crops), sim.shape[1]), float("nan"), dtype=torch.float64)
                    rows[r][cols] = sim
            if valid.any():
                matches = V.match_characters(table, valid)
        shot = {"characters": list(names), "boxes": len(crops), "matched": {}}
        if judge_character is not None:
            judged[index] = {}
        for r, (name, k) in enumerate(zip(names, matches, strict=True)):
            if k is not None:
                matched[name].append(encoded[by_id[name].human][k])
                shot["matched"][name] = {"crop": k, "cross": float(rows[r][k].mean())}
                if judge_character is not None:
                    judged[index][name] = judge_character(index, name, crops[k])
        value = V.occm(len(names), len(crops))
        occm_scores.append(value)
        per_frame[index]["occm"] = value
        shot_details.append(shot)
    per_character: dict[str, tuple[float, float]] = {}
    copy_rates: dict[str, float] = {}
    for character in characters:
        crops_features = matched[character.id]
        if not crops_features:
            per_character[character.id] = (0.0, 0.0)
            continue
        per_character[character.id] = V.character_cids(crops_features, refs[character.id][0], **ensemble)
        _, original, mirrored = refs[character.id]
        copy_rates[character.id] = V.copy_paste_rate(crops_features, original, mirrored, **ensemble)
    values = V.story_means(per_character, occm_scores)
    values["copy_paste"] = sum(copy_rates.values()) / len(copy_rates) if copy_rates else 0.0
    if judge_character is not None:
        from storycast.evaluation.vistory_judge import single_character_scores

        per_shot, story_value = single_character_scores(judged)
        values["single_character_action"] = math.nan if story_value is None else float(story_value)
        for index, value in per_shot.items():
            per_frame[index]["single_character_action"] = float(value)
    expected = sum(len(s) for s in shots)
    details = {
        "cids": {cid: {"cross": c, "self": s} for cid, (c, s) in per_character.items()},
        "copy_paste": copy_rates,
        "shots": shot_details,
        **({"single_character_action": {str(i): scores for i, scores in judged.items()}} if judge_character else {}),
        # Our diagnostic (not a benchmark metric): characters matched to a box over characters expected.
        "matched_characters": sum(len(s.get("matched", {})) for s in shot_details),
        "expected_characters": expected,
    }
    return VistoryScores(values, per_frame, details)


# ----------------------------------------------------------------------------------------------------------------
# Extractors: GroundingDINO boxes and the per-character encoders.
# ----------------------------------------------------------------------------------------------------------------


class GroundingDinoBoxes:
    """GroundingDINO through transformers, as ``groundingdino.util.inference.predict`` returns boxes: normalised
    ``(cx, cy, w, h)`` whose best token probability over the caption is above ``box_threshold``, in query order."""

    def __init__(self, model: Any, processor: Any, caption: str, box_threshold: float):
        from storycast.masks.grounded_sam import build_caption

        self.model, self.processor = model, processor
        self.caption = build_caption([caption])[0]  # lower-cased, '.' appended, as their preprocess_caption
        self.box_threshold = box_threshold

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.processor(images=image.convert("RGB"), text=self.caption, return_tensors="pt")
        model = self.model
        inputs = {
            k: v.to(model.device, dtype=model.dtype) if v.is_floating_point() else v.to(model.device)
            for k, v in inputs.items()
        }
        outputs = model(**inputs)
        scores = outputs.logits[0].float().sigmoid().max(dim=-1).values.cpu()
        keep = scores > self.box_threshold
        return outputs.pred_boxes[0].float().cpu()[keep], scores[keep]


TINY_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "character")


def tiny_grounding_dino(folder: Path, seed: int = 0) -> tuple[Any, Any]:
    """A random-weight GroundingDINO (Swin + BERT, width 32) and its processor at 128 px (its coarsest level keeps more than one pixel); ``folder`` gets the vocab."""
    import transformers
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    image_processor = getattr(transformers, "GroundingDinoImageProcessorPil", transformers.GroundingDinoImageProcessor)
    processor = GroundingDinoProcessor(
        image_processor=image_processor(size={"shortest_edge": 128, "longest_edge": 192}), tokenizer=tokenizer
    )
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_indices=[2, 3, 4],
    )  # fmt: skip
    text = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=8, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=1, decoder_n_points=1, max_text_len=32,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    return model, processor


class FaceEnsemble:
    """The face features of a crop (``get_char_feat(encoder_name='face_mix')``): ArcFace on the best face SCRFD finds
    at the last threshold of their ladder (0.45 down to 0.15; the best face is the same at any threshold that keeps
    it), AdaFace and FaceNet on that face aligned to facexlib's FFHQ 112 px template."""

    def __init__(self, analyzer: Any, adaface: torch.nn.Module, facenet: torch.nn.Module, device: str = "cpu"):
        self.analyzer, self.adaface, self.facenet, self.device = analyzer, adaface, facenet, device
        self.threshold = V.face_threshold_ladder()[-1]

    @torch.no_grad()
    def __call__(self, crops: Sequence[Image.Image]) -> list[V.Features | None]:
        from storycast.vision.adaface import adaface_input
        from storycast.vision.face_geometry import align_face, align_face_ffhq
        from storycast.vision.facenet import facenet_input

        detector = self.analyzer.detector
        saved, detector.score_threshold = detector.score_threshold, self.threshold
        try:
            found = [detector.detect(crop.convert("RGB")) for crop in crops]
        finally:
            detector.score_threshold = saved
        out: list[V.Features | None] = []
        for crop, faces in zip(crops, found, strict=True):
            if not faces:
                out.append(None)
                continue
            landmarks = faces[0].landmarks
            arcface = self.analyzer.embedder.embed([align_face(crop.convert("RGB"), landmarks)])[0]
            rgb = np.asarray(align_face_ffhq(crop.convert("RGB"), landmarks, FACE_SIZE))
            ada, _ = self.adaface(adaface_input([rgb]).to(self.device))
            net = self.facenet(facenet_input([rgb[:, :, ::-1]]).to(self.device))
            out.append(
                {
                    "arcface": torch.nn.functional.normalize(arcface.float(), dim=0),
                    "adaface": torch.nn.functional.normalize(ada[0].float().cpu(), dim=0),
                    "facenet": torch.nn.functional.normalize(net[0].float().cpu(), dim=0),
                }
            )
        return out


def make_encoder(clip: Any, faces: Callable[[Sequence[Image.Image]], list[V.Features | None]] | None) -> Encode:
    """The encoder of :func:`score_vistory_story`: faces for humans, CLIP image features for the rest."""

    def encode(crops: Sequence[Image.Image], human: bool) -> list[V.Features | None]:
        if not crops:
            return []
        if human:
            if faces is None:
                raise SettingsError("a realistic_human character needs the face models. Fix: keep them loaded.")
            return faces(crops)
        return [{"clip": row} for row in clip.encode_images(list(crops))]

    return encode


def resolve_weights_file(
    source: str,
    *,
    local_files_only: bool,
    what: str,
    setting: str,
    flag: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """A weights file from a path, a URL (downloaded once into ``cache_dir``), or '<owner>/<repo>/<file in the repo>'
    on the Hub (cached). ``flag`` names the option that points at a local file (default ``--eval-set <setting>=``)."""
    from storycast.errors import MissingWeightsError
    from storycast.evaluation.downloads import fetch_file, is_url

    fix = f"{flag} <file>" if flag else f"--eval-set {setting}=<file>"
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if is_url(source) and cache_dir is not None and not local_files_only:
        return fetch_file(source, cache_dir, setting=flag or f"--eval-set {setting}=")
    parts = source.split("/")
    if len(parts) < 3 or is_url(source) or source.startswith(("/", ".", "~")):  # a path, not '<owner>/<repo>/...'
        raise MissingWeightsError(f"{what} weights '{source}' are not a file. Fix: {fix}.")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), local_files_only=local_files_only))
    except Exception as err:  # the hub raises many types (offline, missing file, no such repo)
        raise MissingWeightsError(
            f"{what} weights '{source}' could not be found or downloaded ({type(err).__name__}). "
            f"Fix: download the file and pass {fix}."
        ) from None


def load_vistory_extractor(role: str, source: str, tiny: bool, *, cache_dir: Path, device: str, dtype: Any,
                           local_files_only: bool, caption: str, box_threshold: float) -> Any:  # fmt: skip
    """The extractor of ``role`` (one of :data:`VISTORY_ROLES` but 'arcface', which the evaluator loads)."""
    if role == "detector":
        if tiny:
            model, processor = tiny_grounding_dino(cache_dir / "evaluation" / "tiny-grounding-dino")
        else:
            from transformers import AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor

            from storycast.vision.checkpoints import load_checkpoint, load_pil_image_processor

            def load(src: str, local_only: bool) -> tuple[Any, Any]:
                net = GroundingDinoForObjectDetection.from_pretrained(src, local_files_only=local_only)
                tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
                image_processor = load_pil_image_processor(src, local_only)
                return net, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

            model, processor = load_checkpoint(
                load, source, what="GroundingDINO", setting="--eval-set detector_model=<folder>",
                local_files_only=local_files_only,
            )  # fmt: skip
            model = model.to(device=device, dtype=dtype).eval()
        return GroundingDinoBoxes(model, processor, caption, box_threshold)
    if role in FACE_NETS:
        from storycast.vision import adaface, facenet

        tiny_net, load_net, what = {
            "adaface": (adaface.AdaFaceIR.tiny, adaface.load_adaface, "AdaFace"),
            "facenet": (facenet.InceptionResnetV1.tiny, facenet.load_facenet, "FaceNet"),
        }[role]
        if tiny:
            return tiny_net().to(device)
        weights = resolve_weights_file(source, local_files_only=local_files_only, what=what, setting=f"{role}_model")
        return load_net(weights).to(device)
    raise SettingsError(f"'{role}' is not a ViStoryBench extractor. Fix: use one of {', '.join(VISTORY_ROLES)}.")


# ----------------------------------------------------------------------------------------------------------------
# A run folder.
# ----------------------------------------------------------------------------------------------------------------


def vistory_source(run: EvalRun) -> Path:
    """The ViStory story.json the run was drawn from.

    Raises:
        SettingsError: The run was not drawn from a ViStory story, or its story.json is gone.
    """
    story = run.manifest.get("story") or {}
    source = story.get("source")
    if story.get("source_format") != "vistory" or not source:
        raise SettingsError(
            f"{run.path}: the vistorybench metrics score runs of ViStoryBench stories (story.json), but this run was "
            f"drawn from a '{story.get('source_format')}' story. Fix: use another --preset, or draw a ViStory story."
        )
    path = Path(source)
    if not path.is_file():
        raise SettingsError(
            f"{run.path}: the run's story {path} is gone; its characters' tags (realistic_human or not) and its shots' "
            f"texts are read there. Fix: put the ViStory folder back at that path."
        )
    return path


def vistory_characters(run: EvalRun) -> list[CharacterRef]:
    """The run's characters with their ViStory tags, read from the story.json the run was drawn from.

    Raises:
        SettingsError: The run was not drawn from a ViStory story, or its story.json is gone.
    """
    from storycast.story.benchmark import character_id

    raw = json.loads(vistory_source(run).read_text(encoding="utf-8-sig"))["Characters"]
    taken: set[str] = set()
    tags = {character_id(str(key), taken): str(fields.get("tag", "")) for key, fields in raw.items()}
    return [
        CharacterRef(c.id, tags.get(c.id) == HUMAN_TAG, tuple(Path(p) for p in c.references))
        for c in run.story.characters
    ]


def score_vistory_run(evaluator: Any, run: EvalRun, judge_character: JudgeCharacter | None = None) -> VistoryScores:
    """:func:`score_vistory_story` on a run folder, with the evaluator's extractors and preset."""
    from storycast.evaluation.vistory_metrics import FACE_WEIGHTS

    characters = vistory_characters(run)
    faces = None
    if any(c.human for c in characters):
        faces = FaceEnsemble(
            evaluator.extractor("arcface"), evaluator.extractor("adaface"), evaluator.extractor("facenet"),
            evaluator.device,
        )  # fmt: skip
    encode = make_encoder(evaluator.extractor("clip"), faces)
    preset = evaluator.preset
    return score_vistory_story(
        characters,
        [frame.characters for frame in run.story.frames],
        [_open(p) for p in run.frame_files],
        detect=evaluator.extractor("detector"),
        encode=encode,
        method=preset.face_ensemble,
        weights=FACE_WEIGHTS,
        judge_character=judge_character,
    )
