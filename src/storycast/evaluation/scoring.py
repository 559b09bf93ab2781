"""The scoring core: per-frame features of one story in, metric values out; then stories into a split.

Pure functions, no I/O: the :class:`~storycast.evaluation.evaluator.Evaluator` extracts the
features and writes the files. Formulas are those of ``metrics.py``; this module decides, per
preset, which features go into which formula and how values are averaged.

Per-frame values of pairwise metrics (CLIP-I, DINO-I, Face-Sim) are each frame's mean similarity to
the other frames. They are for looking at (the contact sheet shows the odd frame out); the story
value is computed from the pairs, which for 'pairwise' equals the mean of those per-frame values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from storycast.evaluation import metrics as M
from storycast.evaluation.presets import METRICS, QALIGN_TASKS, EvalPreset


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """Every face found in one image.

    Attributes:
        embeddings: (k, d) L2-normalised ArcFace embeddings (k may be 0).
        boxes: (k, 4) x1, y1, x2, y2 in image pixels.
        scores: (k,) detection scores.
    """

    embeddings: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor

    @classmethod
    def none(cls, dim: int = 512) -> FrameFaces:
        return cls(torch.zeros(0, dim), torch.zeros(0, 4), torch.zeros(0))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def main(self, choose: str = "largest") -> torch.Tensor | None:
        """The embedding of the largest face ('largest') or the best-scoring one ('score'); None without faces."""
        if len(self) == 0:
            return None
        if choose == "score":
            return self.embeddings[int(torch.argmax(self.scores))]
        areas = (self.boxes[:, 2] - self.boxes[:, 0]).clamp_min(0) * (self.boxes[:, 3] - self.boxes[:, 1]).clamp_min(0)
        return self.embeddings[int(torch.argmax(areas))]

    def mean_embedding(self) -> torch.Tensor | None:
        """The normalised mean of all faces (a reference sheet showing one person several times)."""
        if len(self) == 0:
            return None
        return M.l2_normalize(self.embeddings.float().mean(dim=0))


@dataclass(frozen=True, eq=False)
class StoryInputs:
    """What scoring one story needs; only the fields of the preset's metrics must be set.

    Attributes:
        frames: Number of frames.
        character_ids: The story's characters, in order.
        frame_characters: Per frame, the indices (into ``character_ids``) of the characters it shows.
        clip_images: (n, d) CLIP image features for CLIP-T / CLIP-T-C.
        clip_t_texts: (n, d) CLIP text features of each frame's CLIP-T text.
        clip_t_c_texts: (m, d) CLIP text features of the CLIP-T-C texts of ``context_frames``.
        context_frames: The frames that have a context phrase (CLIP-T-C is undefined for the others).
        clip_i_images: (n, d) image features for CLIP-I (may be ``clip_images``).
        dino_images: (n, d) DINO features for DINO-I.
        faces: Per frame, the faces found.
        reference_faces: Per character, its reference face embedding (d,) or None (Face-Sim(R), and the
            anchors that tell characters apart in multi-character frames).
        quality: Q-Align metric name -> (n,) scores on the 1-5 scale.
    """

    frames: int
    character_ids: tuple[str, ...] = ()
    frame_characters: tuple[tuple[int, ...], ...] = ()
    clip_images: torch.Tensor | None = None
    clip_t_texts: torch.Tensor | None = None
    clip_t_c_texts: torch.Tensor | None = None
    context_frames: tuple[int, ...] = ()
    clip_i_images: torch.Tensor | None = None
    dino_images: torch.Tensor | None = None
    faces: tuple[FrameFaces, ...] | None = None
    reference_faces: tuple[torch.Tensor | None, ...] = ()
    quality: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StoryScores:
    """The scores of one story.

    Attributes:
        values: Metric -> the story's value (NaN when undefined, e.g. Face-Sim without two faces).
        frames: Per frame, metric -> value (a metric is absent where the frame has none).
        details: Counts behind the values (faces found, pairs scored, per-character Face-Sim).
    """

    values: dict[str, float]
    frames: list[dict[str, float]]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": {k: json_number(v) for k, v in self.values.items()},
            "frames": [{k: json_number(v) for k, v in frame.items()} for frame in self.frames],
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoryScores:
        return cls(
            values={k: from_json_number(v) for k, v in data["values"].items()},
            frames=[{k: from_json_number(v) for k, v in frame.items()} for frame in data["frames"]],
            details=dict(data.get("details") or {}),
        )


def json_number(value: float | None) -> float | None:
    """NaN as null (JSON has no NaN), floats rounded to 6 decimals."""
    if value is None or math.isnan(value):
        return None
    return round(float(value), 6)


def from_json_number(value: float | None) -> float:
    return math.nan if value is None else float(value)


# ----------------------------------------------------------------------------------------------
# One story


def _need(value: Any, name: str, metric: str) -> Any:
    if value is None:
        raise M.MetricInputError(f"{metric} needs StoryInputs.{name}, which is not set.")
    return value


def _check_rows(features: torch.Tensor, n: int, name: str) -> None:
    if features.shape[0] != n:
        raise M.MetricInputError(f"StoryInputs.{name} has {features.shape[0]} rows for {n} frames.")


def consistency(
    features: torch.Tensor, *, pairing: str = "pairwise", anchor: int = 0, scale: float = 1.0
) -> tuple[float, list[float | None]]:
    """CLIP-I / DINO-I of one story: the value and each frame's mean similarity to the others (or to the anchor).

    Fewer than 2 frames give NaN. With 'anchor' pairing the anchor frame has no per-frame value.
    """
    n = features.shape[0]
    if n < 2:
        return math.nan, [None] * n
    sims = M.cosine_matrix(features, features)
    if pairing == "pairwise":
        value = float(M.pairwise_similarity(features, scale=scale))
        off_diagonal = sims.masked_fill(torch.eye(n, dtype=torch.bool), 0.0).sum(dim=1) / (n - 1)
        return value, [scale * float(v) for v in off_diagonal]
    if pairing == "anchor":
        if anchor >= n:
            raise M.MetricInputError(f"anchor frame {anchor} is out of range for {n} frames.")
        value = float(M.anchor_similarity(features, anchor, scale=scale))
        return value, [None if i == anchor else scale * float(sims[i, anchor]) for i in range(n)]
    raise M.MetricInputError(f"pairing '{pairing}' is not known; use 'pairwise' or 'anchor'.")


def _frame_anchors(inputs: StoryInputs, n_chars: int) -> list[torch.Tensor | None]:
    """Per character, an embedding that identifies it among the faces of a multi-character frame.

    The reference faces when every character has one. Otherwise the faces of the first frame that shows
    every character and has that many faces: characters with a reference take the faces closest to it,
    the others the remaining faces left to right, in character order. A character with neither keeps
    None (its Face-Sim is undefined).
    """
    references = list(inputs.reference_faces) + [None] * (n_chars - len(inputs.reference_faces))
    if all(r is not None for r in references):
        return references
    faces = inputs.faces or ()
    for chars, frame in zip(inputs.frame_characters, faces, strict=True):
        if len(set(chars)) != n_chars or len(frame) < n_chars:
            continue
        areas = (frame.boxes[:, 2] - frame.boxes[:, 0]) * (frame.boxes[:, 3] - frame.boxes[:, 1])
        largest = torch.argsort(areas, descending=True)[:n_chars]
        candidates = [int(i) for i in largest[torch.argsort(frame.boxes[largest, 0])]]
        anchors = list(references)
        known = [c for c in range(n_chars) if references[c] is not None]
        if known:
            similarity = M.cosine_matrix(torch.stack([references[c] for c in known]), frame.embeddings[candidates])
            taken = {candidates[j] for j in M.assign_faces(similarity) if j is not None}
            candidates = [i for i in candidates if i not in taken]
        for c, face in zip([c for c in range(n_chars) if references[c] is None], candidates, strict=False):
            anchors[c] = frame.embeddings[face]
        return anchors
    return references


def character_faces(inputs: StoryInputs, choose: str = "largest") -> list[M.CharacterFaces]:
    """Per character, its face in each frame that shows it (None where no face was found or matched).

    One character: the frame's main face (``choose``). Several: faces are assigned to characters by
    maximum total cosine to per-character anchors (``metrics.match_faces_to_characters``).
    """
    n_chars = len(inputs.character_ids)
    faces = _need(inputs.faces, "faces", "Face-Sim")
    if len(faces) != inputs.frames or len(inputs.frame_characters) != inputs.frames:
        raise M.MetricInputError(
            f"faces ({len(faces)}) and frame_characters ({len(inputs.frame_characters)}) need one entry per frame "
            f"({inputs.frames})."
        )
    if n_chars == 1:
        frames = tuple(f for f, chars in enumerate(inputs.frame_characters) if 0 in chars)
        return [M.CharacterFaces(0, frames, tuple(faces[f].main(choose) for f in frames))]
    anchors = _frame_anchors(inputs, n_chars)
    result = []
    for c in range(n_chars):
        frames = tuple(f for f, chars in enumerate(inputs.frame_characters) if c in chars)
        result.append(M.CharacterFaces(c, frames, (None,) * len(frames)))
    known = [c for c in range(n_chars) if anchors[c] is not None]
    if known:
        position = {c: i for i, c in enumerate(known)}
        matched = M.match_faces_to_characters(
            [frame.embeddings for frame in faces],
            torch.stack([anchors[c] for c in known]),
            present=[[position[c] for c in chars if c in position] for chars in inputs.frame_characters],
        )
        for c in known:
            result[c] = M.CharacterFaces(c, matched[position[c]].frames, matched[position[c]].embeddings)
    return result


def _per_frame_to_others(per_character: Sequence[M.CharacterFaces], n: int, scale: float) -> list[float | None]:
    """Each frame's mean face cosine to the same characters' faces in the other frames."""
    sums, counts = [0.0] * n, [0] * n
    for character in per_character:
        found = [(f, e) for f, e in zip(character.frames, character.embeddings, strict=True) if e is not None]
        if len(found) < 2:
            continue
        sims = M.cosine_matrix(torch.stack([e for _, e in found]), torch.stack([e for _, e in found]))
        k = len(found)
        means = sims.masked_fill(torch.eye(k, dtype=torch.bool), 0.0).sum(dim=1) / (k - 1)
        for (f, _), value in zip(found, means, strict=True):
            sums[f] += scale * float(value)
            counts[f] += 1
    return [sums[f] / counts[f] if counts[f] else None for f in range(n)]


def _per_frame_to_reference(
    per_character: Sequence[M.CharacterFaces], references: Sequence[torch.Tensor | None], n: int, scale: float
) -> list[float | None]:
    sums, counts = [0.0] * n, [0] * n
    for character in per_character:
        reference = references[character.character] if character.character < len(references) else None
        if reference is None:
            continue
        for f, embedding in zip(character.frames, character.embeddings, strict=True):
            if embedding is not None:
                sums[f] += scale * float(M.cosine_matrix(embedding, reference)[0, 0])
                counts[f] += 1
    return [sums[f] / counts[f] if counts[f] else None for f in range(n)]


def _mean_over_characters(results: Sequence[M.FaceSimilarity | None]) -> float:
    values = [r.value for r in results if r is not None and not math.isnan(r.value)]
    return sum(values) / len(values) if values else math.nan


def _face_record(character_id: str, result: M.FaceSimilarity | None) -> dict[str, Any]:
    if result is None:
        return {"character": character_id, "value": None, "reason": "no reference"}
    return {
        "character": character_id,
        "value": json_number(result.value),
        "frames": result.frames_total,
        "frames_with_face": result.frames_with_face,
        "pairs": result.pairs_total,
        "pairs_scored": result.pairs_scored,
    }


def _score_faces(inputs: StoryInputs, preset: EvalPreset, out: StoryScores) -> None:
    n = inputs.frames
    wanted = [m for m in ("face_sim", "face_sim_r") if m in preset.metrics]
    faces = _need(inputs.faces, "faces", "Face-Sim")
    out.details["faces_found"] = [len(frame) for frame in faces]
    if not inputs.character_ids:
        for metric in wanted:
            out.values[metric] = math.nan
        out.details["face_note"] = "the story has no characters"
        return
    per_character = character_faces(inputs, preset.face_choice)
    expected = sum(len(c.frames) for c in per_character)
    matched = sum(e is not None for c in per_character for e in c.embeddings)
    out.details["face_coverage"] = {
        "expected": expected,
        "found": matched,
        "coverage": json_number(matched / expected if expected else math.nan),
    }
    if "face_sim" in preset.metrics:
        results = [
            M.face_similarity_pairwise(c.embeddings, missing=preset.face_missing, scale=preset.face_scale)
            for c in per_character
        ]
        out.values["face_sim"] = _mean_over_characters(results)
        for f, value in enumerate(_per_frame_to_others(per_character, n, preset.face_scale)):
            if value is not None:
                out.frames[f]["face_sim"] = value
        out.details["face_sim"] = [_face_record(cid, r) for cid, r in zip(inputs.character_ids, results, strict=True)]
    if "face_sim_r" in preset.metrics:
        references = list(inputs.reference_faces) + [None] * (len(inputs.character_ids) - len(inputs.reference_faces))
        results_r: list[M.FaceSimilarity | None] = [
            None
            if references[c.character] is None
            else M.face_similarity_to_reference(
                c.embeddings, references[c.character], missing=preset.face_missing, scale=preset.face_scale
            )
            for c in per_character
        ]
        out.values["face_sim_r"] = _mean_over_characters(results_r)
        for f, value in enumerate(_per_frame_to_reference(per_character, references, n, preset.face_scale)):
            if value is not None:
                out.frames[f]["face_sim_r"] = value
        out.details["face_sim_r"] = [
            _face_record(cid, r) for cid, r in zip(inputs.character_ids, results_r, strict=True)
        ]


def score_story(inputs: StoryInputs, preset: EvalPreset) -> StoryScores:
    """Every metric of ``preset`` for one story.

    Raises:
        MetricInputError: A feature the preset's metrics need is missing or has the wrong number of rows.
    """
    n = inputs.frames
    if n < 1:
        raise M.MetricInputError("a story to score needs at least one frame.")
    out = StoryScores(values={}, frames=[{} for _ in range(n)])
    metrics = preset.metrics

    if "clip_t" in metrics or "clip_t_c" in metrics:
        images = _need(inputs.clip_images, "clip_images", "CLIP-T")
        _check_rows(images, n, "clip_images")
    if "clip_t" in metrics:
        texts = _need(inputs.clip_t_texts, "clip_t_texts", "CLIP-T")
        _check_rows(texts, n, "clip_t_texts")
        values = M.clip_t(images, texts, scale=preset.text_scale, clamp_negative=preset.text_clamp)
        out.values["clip_t"] = M.story_mean(values)
        for f in range(n):
            out.frames[f]["clip_t"] = float(values[f])
    if "clip_t_c" in metrics:
        frames = list(inputs.context_frames)
        if frames:
            texts = _need(inputs.clip_t_c_texts, "clip_t_c_texts", "CLIP-T-C")
            _check_rows(texts, len(frames), "clip_t_c_texts")
            values = M.clip_t(images[frames], texts, scale=preset.text_scale, clamp_negative=preset.text_clamp)
            out.values["clip_t_c"] = M.story_mean(values)
            for f, value in zip(frames, values, strict=True):
                out.frames[f]["clip_t_c"] = float(value)
        else:
            out.values["clip_t_c"] = math.nan
            out.details["clip_t_c_note"] = "no frame has a context phrase"

    for metric, name in (("clip_i", "clip_i_images"), ("dino_i", "dino_images")):
        if metric not in metrics:
            continue
        features = _need(getattr(inputs, name), name, METRICS[metric].label)
        _check_rows(features, n, name)
        value, per_frame = consistency(
            features, pairing=preset.image_pairing, anchor=preset.anchor_frame, scale=preset.image_scale
        )
        out.values[metric] = value
        for f, v in enumerate(per_frame):
            if v is not None:
                out.frames[f][metric] = v

    if "face_sim" in metrics or "face_sim_r" in metrics:
        _score_faces(inputs, preset, out)

    for metric in QALIGN_TASKS:
        if metric not in metrics:
            continue
        scores = inputs.quality.get(metric)
        scores = _need(scores, f"quality['{metric}']", METRICS[metric].label)
        _check_rows(scores.reshape(-1, 1), n, f"quality['{metric}']")
        out.values[metric] = M.story_mean(scores)
        for f in range(n):
            out.frames[f][metric] = float(scores[f])

    # ViStoryBench's metrics are scored from the run folder (evaluator.score_run adds them).
    return StoryScores({m: out.values[m] for m in preset.ordered_metrics if m in out.values}, out.frames, out.details)


# ----------------------------------------------------------------------------------------------
# Stories into a split


@dataclass(frozen=True)
class MetricSummary:
    """One metric over a set of stories.

    Attributes:
        mean: The mean (NaN when no story had a value).
        sem: Standard error of the mean (NaN below 2 values).
        n: Number of values averaged.
        over: What was averaged: 'stories' (per-story values) or 'frames' (flat mean over all frames).
        skipped: Stories (or frames) without a value, left out.
    """

    mean: float
    sem: float
    n: int
    over: str
    skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": json_number(self.mean),
            "sem": json_number(self.sem),
            "n": self.n,
            "over": self.over,
            "skipped": self.skipped,
        }


def summarize(stories: Sequence[StoryScores], preset: EvalPreset) -> dict[str, MetricSummary]:
    """Each metric over ``stories``: per-story values then their unweighted mean (``preset.aggregation``
    'story'), or, for per-frame metrics under 'flat', the mean over every frame of every story."""
    out: dict[str, MetricSummary] = {}
    for metric in preset.ordered_metrics:
        if preset.aggregation == "flat" and METRICS[metric].per_frame:
            values = [frame[metric] for story in stories for frame in story.frames if metric in frame]
            expected = sum(len(story.frames) for story in stories)
            aggregate = M.aggregate_stories(values)
            out[metric] = MetricSummary(
                aggregate.mean, aggregate.sem, aggregate.n_stories, "frames", expected - len(values)
            )
        else:
            aggregate = M.aggregate_stories([story.values.get(metric, math.nan) for story in stories])
            out[metric] = MetricSummary(
                aggregate.mean, aggregate.sem, aggregate.n_stories, "stories", aggregate.n_skipped
            )
    return out


def face_coverage(stories: Sequence[StoryScores]) -> float:
    """Share of expected character faces found over ``stories`` (NaN when none was expected)."""
    expected = sum(s.details.get("face_coverage", {}).get("expected", 0) for s in stories)
    found = sum(s.details.get("face_coverage", {}).get("found", 0) for s in stories)
    return found / expected if expected else math.nan
