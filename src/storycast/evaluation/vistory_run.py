"""Every ViStoryBench metric of a run folder, and the metrics of a results row (a set of runs).

The evaluator calls :func:`score_vistory_metrics` for each run (one story) and :func:`pooled_vistory_metrics` for
each row of its results table; the formulas live elsewhere:

- ``cids_cross``, ``cids_self``, ``occm``, ``copy_paste`` and ``single_character_action``:
  :mod:`storycast.evaluation.vistory_scoring` (GroundingDINO crops; the judge sees each matched crop);
- ``cross_csd``, ``self_csd``: :mod:`storycast.evaluation.vistory_style` on CSD style embeddings of the frames and of
  each character's first reference image;
- ``aesthetic``: Aesthetic Predictor V2.5 per frame, the story's mean (``aesthetic_evaluator.py`` lines 68-91);
- ``prompt_align_scene``, ``prompt_align_camera``, ``prompt_align_character_action``: the judge on each frame against
  its shot's Setting Description, Shot Perspective Design and Static Shot Description, read from the run's
  ``story.json`` in the language the run was drawn in (:mod:`storycast.evaluation.vistory_judge`);
- ``prompt_align``: the leaderboard's average (:func:`vistory_judge.prompt_align_average`), per story from the story's
  values and, per results row, again from the row's means (as the leaderboard computes it from a run's means);
- ``inception_score``: one number per results row (a method's stories of one split: the benchmark's run of one
  method, mode and language), over every frame of its stories; none per story.

Without a judge (``--judge-url``) the five judge metrics are NaN and the reason is recorded in ``scores.json``
(``details.skipped_metrics``) and in ``results.json`` (``metric_notes``); so are the CIDS metrics of a story CIDS
cannot score (a human character whose reference images show no face), whose other metrics are still computed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import SettingsError
from storycast.evaluation.presets import VISTORY_JUDGE_METRICS
from storycast.evaluation.vistory_scoring import VistoryScores

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from storycast.evaluation.report import ScoredRun
    from storycast.evaluation.runfolders import EvalRun
    from storycast.evaluation.scoring import MetricSummary

CIDS_METRICS = frozenset({"cids_cross", "cids_self", "occm", "copy_paste"})
"""Metrics of the CIDS pipeline (GroundingDINO, the face ensemble, CLIP); ``single_character_action`` also needs it."""
STYLE_METRICS = frozenset({"cross_csd", "self_csd"})
SHOT_ASPECT_METRICS: dict[str, str] = {
    "scene": "prompt_align_scene",
    "camera": "prompt_align_camera",
    "character_action": "prompt_align_character_action",
}
"""The judge's shot aspect (``vistory_judge.SHOT_ASPECTS``) -> our metric (``published.VISTORYBENCH_METRICS``)."""
VISTORY_METRICS = frozenset({*CIDS_METRICS, *STYLE_METRICS, "aesthetic", "inception_score", *VISTORY_JUDGE_METRICS})
"""Every ViStoryBench metric: scored from the run folder by :func:`score_vistory_metrics`."""
TINY_SEED = 0
"""Seed of the tiny stand-ins (``evaluator.TINY_SEED``)."""
SHOT_FIELDS = {
    "scene": "Setting Description",
    "script": "Static Shot Description",
    "camera": "Shot Perspective Design",
}


def needs_cids(metrics: Sequence[str] | set[str], judged: bool) -> bool:
    """Whether the CIDS pipeline (and its extractors) runs: a CIDS metric, or a judged single-character action."""
    return bool(set(metrics) & CIDS_METRICS) or (judged and "single_character_action" in metrics)


def _normal(text: Any) -> str:
    return " ".join(str(text).split())


def shot_texts(run: EvalRun) -> list[dict[str, str]]:
    """Per frame, its shot's ``scene``, ``script`` and ``camera`` texts, read from the run's ``story.json`` in the
    language the run was drawn in (the one whose Setting Descriptions are the frames' context phrases).

    Raises:
        SettingsError: The story.json is gone, or no language matches the run's frames.
    """
    from storycast.evaluation.vistory_scoring import vistory_source
    from storycast.story.vistory import LANGUAGES

    shots = json.loads(vistory_source(run).read_text(encoding="utf-8-sig"))["Shots"]
    contexts = [_normal(frame.context or "") for frame in run.story.frames]
    for language in LANGUAGES:
        texts = [{name: str(shot[field][language]) for name, field in SHOT_FIELDS.items()} for shot in shots]
        if len(texts) == len(contexts) and [_normal(t["scene"]) for t in texts] == contexts:
            return texts
    raise SettingsError(
        f"{run.path}: its frames' scenes match the Setting Descriptions of story {vistory_source(run)} in none of "
        f"{', '.join(LANGUAGES)}, so the judge cannot be given the shots' texts. Fix: score the run drawn from that "
        "story.json as it is now, or draw the run again."
    )


def _as_opened(path: Path) -> Image.Image:
    """The image as the judge is given it: as it is on disk (their encode_image resizes before any conversion)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def _style(evaluator: Any, run: EvalRun, out: VistoryScores) -> None:
    from storycast.evaluation.vistory_style import cross_csd, self_csd

    metrics = evaluator.preset.metrics
    style = evaluator.file_rows("csd", "image", run.frame_files, _encode, hashes=run.frame_hashes)
    if "self_csd" in metrics:
        out.values["self_csd"] = self_csd(style)
    if "cross_csd" in metrics:
        with_references = [c for c in run.story.characters if c.references]
        references = [Path(c.references[0]) for c in with_references]  # the first reference image, as theirs
        rows = evaluator.file_rows("csd", "image", references, _encode) if references else None
        reference_style = {c.id: rows[k] for k, c in enumerate(with_references)} if rows is not None else {}
        found = cross_csd(
            {i: style[i] for i in range(len(run.story))},
            reference_style,
            {i: list(frame.characters) for i, frame in enumerate(run.story.frames)},
        )
        out.values["cross_csd"] = found.value
        for index, value in found.shots.items():
            out.frames[index]["cross_csd"] = value
        out.details["cross_csd"] = {str(i): dict(pairs) for i, pairs in found.characters.items()}


def _encode(model: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    return model.encode_images(images)


def _aesthetic_scores(model: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    return model.score_images(images).reshape(-1, 1)


def _class_probabilities(model: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    return model.class_probabilities(images)


def _judge_shots(judge: Any, run: EvalRun, texts: Sequence[Mapping[str, str]], out: VistoryScores) -> list[Any]:
    from storycast.evaluation.vistory_judge import shot_aspect_means

    shots = {i: (_as_opened(path), texts[i]) for i, path in enumerate(run.frame_files)}
    judged = judge.judge_shots(shots)
    per_shot = {i: {aspect: j.score for aspect, j in aspects.items()} for i, aspects in judged.items()}
    for aspect, value in shot_aspect_means(per_shot).items():
        out.values[SHOT_ASPECT_METRICS[aspect]] = float(value)
    for index, aspects in per_shot.items():
        for aspect, score in aspects.items():
            out.frames[index][SHOT_ASPECT_METRICS[aspect]] = float(score)
    out.details["prompt_align"] = {str(i): scores for i, scores in per_shot.items()}
    return [j for aspects in judged.values() for j in aspects.values()]


def _character_judge(judge: Any, run: EvalRun, texts: Sequence[Mapping[str, str]], record: list[Any]) -> Callable:
    names = {c.id: c.name or c.id for c in run.story.characters}

    def judge_character(index: int, character: str, crop: Image.Image) -> int:
        judgement = judge.judge_character(texts[index]["script"], names[character], crop)
        record.append(judgement)
        return judgement.score

    return judge_character


def score_vistory_metrics(evaluator: Any, run: EvalRun) -> VistoryScores:
    """Every ViStoryBench metric of ``evaluator.preset`` for one run, with the evaluator's (cached) extractors."""
    from storycast.evaluation.metrics import story_mean
    from storycast.evaluation.vistory_judge import prompt_align_average, unparsed_count

    metrics = set(evaluator.preset.metrics)
    out = VistoryScores({}, [{} for _ in range(len(run.story))], {})
    wants_judge = bool(metrics & set(VISTORY_JUDGE_METRICS))
    judge = evaluator.judge if wants_judge else None
    texts = shot_texts(run) if judge is not None else []
    judgements: list[Any] = []
    skipped: dict[str, str] = {}
    if needs_cids(metrics, judge is not None):
        from storycast.evaluation.metrics import MetricInputError
        from storycast.evaluation.vistory_scoring import score_vistory_run

        single = judge is not None and "single_character_action" in metrics
        try:
            found = score_vistory_run(
                evaluator, run, _character_judge(judge, run, texts, judgements) if single else None
            )
        except MetricInputError as err:  # e.g. a human's references show no face: this story has no CIDS, as
            # theirs (its per-story, per-metric try) still scores the story's other metrics and the other stories
            cids = [m for m in (*CIDS_METRICS, "single_character_action") if m in metrics]
            skipped.update({m: f"story '{run.title}': {err}" for m in cids})
        else:
            out.values.update(found.values)
            for frame, values in zip(out.frames, found.frames, strict=True):
                frame.update(values)
            out.details["vistory"] = found.details
    if metrics & STYLE_METRICS:
        _style(evaluator, run, out)
    if "aesthetic" in metrics:
        scores = evaluator.file_rows("aesthetic", "score", run.frame_files, _aesthetic_scores, hashes=run.frame_hashes)
        out.values["aesthetic"] = story_mean(scores.reshape(-1))
        for index, value in enumerate(scores.reshape(-1).tolist()):
            out.frames[index]["aesthetic"] = value
    if wants_judge and judge is None:
        reason = evaluator.judge_skip_reason
        skipped.update({m: reason for m in VISTORY_JUDGE_METRICS if m in metrics})
    elif wants_judge:
        if metrics & set(SHOT_ASPECT_METRICS.values()) or "prompt_align" in metrics:
            judgements += _judge_shots(judge, run, texts, out)
        out.details["judge"] = {**judge.info, "unparsed": unparsed_count(judgements), "asked": len(judgements)}
        average = prompt_align_average(*(_present(out.values, m) for m in VISTORY_JUDGE_METRICS[:4]))
        out.values["prompt_align"] = math.nan if average is None else average
    out.values = {m: v for m, v in out.values.items() if m in metrics}
    out.values.update({m: math.nan for m in skipped if m not in out.values})
    if skipped:
        out.details["skipped_metrics"] = skipped
    out.frames = [{m: v for m, v in frame.items() if m in metrics} for frame in out.frames]
    return out


def _present(values: Mapping[str, float], metric: str) -> float | None:
    value = values.get(metric)
    return None if value is None or math.isnan(value) else value


def pooled_vistory_metrics(
    evaluator: Any, items: Sequence[ScoredRun], summaries: Mapping[str, MetricSummary]
) -> dict[str, MetricSummary]:
    """The metrics of a results row that are not means of its stories' values: ``inception_score`` over every frame
    of the row's runs (``splits=1``, as theirs), and ``prompt_align`` from the row's means."""
    from storycast.evaluation.scoring import MetricSummary
    from storycast.evaluation.vistory_diversity import VISTORY_SPLITS, inception_score
    from storycast.evaluation.vistory_judge import prompt_align_average

    metrics = evaluator.preset.metrics
    out: dict[str, MetricSummary] = {}
    if "inception_score" in metrics:
        import torch

        probs = torch.cat(
            [
                evaluator.file_rows(
                    "inception", "probs", item.run.frame_files, _class_probabilities, hashes=item.run.frame_hashes
                )
                for item in items
            ]
        )
        found = inception_score(probs, splits=VISTORY_SPLITS)
        out["inception_score"] = MetricSummary(found.mean, math.nan, found.images, "frames", len(probs) - found.images)
    if "prompt_align" in metrics:
        means = [summaries.get(m) for m in VISTORY_JUDGE_METRICS[:4]]
        average = prompt_align_average(*(None if s is None or math.isnan(s.mean) else s.mean for s in means))
        stories = max((s.n for s in means if s is not None), default=0)
        out["prompt_align"] = MetricSummary(
            math.nan if average is None else average, math.nan, stories, "stories", len(items) - stories
        )
    return out


def load_vistory_model(
    source: Any,
    *,
    cache_dir: Path,
    device: str,
    dtype: Any,
    batch_size: int,
    local_files_only: bool,
) -> Any:
    """The extractor of ``source.role``: 'csd' (:class:`~storycast.vision.csd.CsdFeatures`), 'aesthetic'
    (:class:`~storycast.vision.aesthetic.AestheticScorer`) or 'inception'
    (:class:`~storycast.vision.inception.InceptionClassifier`); tiny random-weight ones for ``source.tiny``. CSD and
    Inception-v3 run in float32, as ViStoryBench runs them; the aesthetic model in ``dtype``."""
    import torch

    from storycast.evaluation.vistory_scoring import resolve_weights_file

    role = source.role
    fp32 = {"device": device, "dtype": torch.float32, "batch_size": batch_size}
    if role == "csd":
        from storycast.vision.csd import CsdFeatures

        if source.tiny:
            return CsdFeatures.tiny(TINY_SEED, **fp32)
        path = resolve_weights_file(
            source.source, local_files_only=local_files_only, what="CSD", setting="csd_model", flag=source.flag,
            cache_dir=cache_dir,
        )  # fmt: skip
        return CsdFeatures.from_file(path, setting=source.flag, **fp32)
    if role == "inception":
        from storycast.vision.inception import InceptionClassifier

        if source.tiny:
            return InceptionClassifier.tiny(TINY_SEED, **fp32)
        path = resolve_weights_file(
            source.source, local_files_only=local_files_only, what="Inception-v3", setting="inception_model",
            flag=source.flag, cache_dir=cache_dir,
        )  # fmt: skip
        return InceptionClassifier.from_file(path, setting=source.flag, **fp32)
    if role == "aesthetic":
        from storycast.vision.aesthetic import AestheticScorer

        if source.tiny:
            return AestheticScorer.tiny(TINY_SEED, device=device, dtype=dtype, batch_size=batch_size)
        path = resolve_weights_file(
            source.source, local_files_only=local_files_only, what="Aesthetic Predictor V2.5 head",
            setting="aesthetic_model", flag=source.flag, cache_dir=cache_dir,
        )  # fmt: skip
        return AestheticScorer.from_pretrained(
            path, source.backbone, device=device, dtype=dtype, batch_size=batch_size,
            local_files_only=local_files_only,
        )  # fmt: skip
    raise SettingsError(f"'{role}' is not a ViStoryBench model. Fix: use csd, aesthetic or inception.")
