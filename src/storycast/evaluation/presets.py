"""Evaluation presets: each paper's scoring protocol as one typed, documented object.

A preset says *what* is measured and *how*: which metrics, which checkpoints, which text each image
is compared with, the scale of each number, how frames are paired and how stories are averaged. It
says nothing about where the model files live on this machine or whether tiny random models stand in
for them; that is :class:`storycast.evaluation.evaluator.ExtractorOptions`. So ``--preset tiny`` runs
a paper's protocol unchanged on tiny extractors, and the preset recorded next to the numbers is the
protocol that produced them.

Facts and their sources are in ``docs/metrics.md`` (the presets side by side in §6.2); what could not
be verified is listed in each preset's ``caveats`` and recorded in every result.
"""

from __future__ import annotations

import dataclasses
import logging
import string
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from storycast.errors import SettingsError

# This module stays free of torch so that building the command line is fast; the constants below
# equal those of metrics.py, vision/features.py and vision/faces.py (tests/evaluation/test_presets.py checks it).
PERCENT = 100.0
"""IdentityStory's scale: CLIP-T, CLIP-T-C, CLIP-I and Face-Sim in % (``metrics.PERCENT``)."""
HESSEL_W = 2.5
"""Hessel et al.'s CLIPScore weight (``metrics.HESSEL_W``)."""
DEFAULT_DINO_CHECKPOINT = "facebook/dinov2-base"
"""``vision.features.DEFAULT_DINO_CHECKPOINT``."""
FACE_PACK_NAMES = ("buffalo_l", "antelopev2")
"""The insightface packs ``vision.faces.FACE_PACKS`` knows."""

Pairing = Literal["pairwise", "anchor"]
Aggregation = Literal["story", "flat"]
FaceReference = Literal["auto", "photos", "identity"]
FaceChoice = Literal["largest", "score"]
MissingFacePolicy = Literal["skip", "zero"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is called in tables and how it is computed.

    Attributes:
        name: Identifier used in files and flags (``clip_t``).
        label: Column header as in the papers (``CLIP-T``).
        group: The papers' column group (Text Alignment, Character Consistency, Image Quality).
        per_frame: One value per frame, then a mean (True), or one value per story from pairs of frames (False).
        higher_is_better: Direction of the arrow in table headers.
    """

    name: str
    label: str
    group: str
    per_frame: bool
    higher_is_better: bool = True


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("clip_t", "CLIP-T", "Text Alignment", per_frame=True),
        MetricInfo("clip_t_c", "CLIP-T-C", "Text Alignment", per_frame=True),
        MetricInfo("clip_i", "CLIP-I", "Character Consistency", per_frame=False),
        MetricInfo("dino_i", "DINO-I", "Character Consistency", per_frame=False),
        MetricInfo("face_sim", "Face-Sim", "Character Consistency", per_frame=False),
        MetricInfo("face_sim_r", "Face-Sim(R)", "Character Consistency", per_frame=False),
        MetricInfo("qalign_gen", "Q-Align-Gen", "Image Quality", per_frame=True),
        MetricInfo("qalign_aes", "Q-Align-Aes", "Image Quality", per_frame=True),
    )
}
"""Every metric storycast computes, in the column order of the papers' tables."""

# ViStoryBench (``ViStoryBench/vistorybench`` @ 514cc31): keys as published.VISTORYBENCH_METRICS names the
# leaderboard's columns (its results call them csd.cross_csd, cids.cids_cross_mean, aesthetic.aesthetic_score,
# diversity.inception_score, prompt_align.scene, ...), in the leaderboard's order, labels as its columns;
# copy_paste (cids.copy_paste_score) is not on the leaderboard.
VISTORY_METRIC_INFO = (
    MetricInfo("cross_csd", "Cross CSD", "Style Consistency", per_frame=True),
    MetricInfo("self_csd", "Self CSD", "Style Consistency", per_frame=False),
    MetricInfo("cids_cross", "Cross Cref", "Character Consistency", per_frame=False),
    MetricInfo("cids_self", "Self Cref", "Character Consistency", per_frame=False),
    MetricInfo("aesthetic", "Aesthetics", "Image Quality", per_frame=True),
    MetricInfo("inception_score", "Inception Score", "Diversity", per_frame=False),
    MetricInfo("occm", "OCCM", "Character Count", per_frame=True),
    MetricInfo("prompt_align_scene", "Scene", "Prompt Alignment", per_frame=True),
    MetricInfo("prompt_align_camera", "Camera", "Prompt Alignment", per_frame=True),
    MetricInfo("prompt_align_character_action", "Global Action", "Prompt Alignment", per_frame=True),
    MetricInfo("single_character_action", "Single Action", "Prompt Alignment", per_frame=False),
    MetricInfo("prompt_align", "Prompt Align Avg", "Prompt Alignment", per_frame=False),
    MetricInfo("copy_paste", "Copy-Paste", "Character Consistency", per_frame=False, higher_is_better=False),
)
METRICS.update({m.name: m for m in VISTORY_METRIC_INFO})
VISTORY_JUDGE_METRICS = (
    "prompt_align_scene",
    "prompt_align_camera",
    "prompt_align_character_action",
    "single_character_action",
    "prompt_align",
)
"""The metrics a vision-language judge gives (``--judge-url``); skipped, with the reason recorded, without one."""

METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "qalign": ("qalign_gen", "qalign_aes"),
    "faces": ("face_sim", "face_sim_r"),
    "csd": ("cross_csd", "self_csd"),
    "cids": ("cids_cross", "cids_self"),
    "prompt_align": VISTORY_JUDGE_METRICS,
}
"""Names that stand for several metrics in ``--with`` / ``--skip``."""

QALIGN_TASKS: dict[str, str] = {"qalign_gen": "quality", "qalign_aes": "aesthetics"}
"""OneAlign ``task_`` of each Q-Align metric (spelling matters: the word goes into the prompt)."""

TEXT_FIELDS = ("prompt", "context", "scene", "style")
"""Placeholders of the CLIP-T / CLIP-T-C text templates: the full prompt as drawn, the frame's context
phrase (``settings[i]`` of the benchmark), the frame text without the style, the style prefix."""


def metric_names(names: Iterable[str]) -> tuple[str, ...]:
    """Normalise metric names as typed on a command line: 'CLIP-T', 'clip-t', 'Face-Sim(R)', 'qalign' (a group)."""
    out: list[str] = []
    for raw in names:
        key = raw.strip().lower().replace("(r)", "_r").replace("-", "_")
        found = METRIC_GROUPS.get(key) or ((key,) if key in METRICS else None)
        if found is None:
            known = ", ".join([*METRICS, *METRIC_GROUPS])
            raise SettingsError(f"metric '{raw}' is not known. Fix: use one of {known}.")
        out.extend(name for name in found if name not in out)
    return tuple(out)


def template_fields(template: str) -> set[str]:
    """The placeholder names used in a text template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass(frozen=True)
class EvalPreset:
    """A scoring protocol: metrics, checkpoints, texts, scales, pairings and aggregation.

    Attributes:
        name: Preset name (``--eval-preset NAME``).
        description: One line for listings and reports.
        metrics: The metrics computed, names from ``METRICS`` (table columns follow ``METRICS``' order).
        clip_model: CLIP checkpoint (Hub id) for CLIP-T and CLIP-T-C, and for CLIP-I unless ``clip_i_model`` is set.
        clip_i_model: CLIP checkpoint for CLIP-I when it differs (the 1P1S-lineage script: ViT-B/16), else None.
        clip_t_text: Text each frame is compared with for CLIP-T; placeholders ``TEXT_FIELDS``.
        clip_t_c_text: Text for CLIP-T-C (context alignment). Frames without a context phrase get no value.
        text_scale: Factor on the cosine for CLIP-T / CLIP-T-C: 100 (IdentityStory, in %) or 2.5 (Hessel's CLIPScore).
        text_clamp: Clamp negative cosines to 0 before scaling (Hessel's ``max(cos, 0)``).
        image_pairing: CLIP-I / DINO-I over all pairs i<j of a story ('pairwise') or to frame ``anchor_frame``.
        anchor_frame: The anchor frame of 'anchor' pairing.
        image_scale: Factor on the cosine for CLIP-I / DINO-I (100 in %, 1 as a plain cosine).
        dino_model: DINO checkpoint for DINO-I (DINOv2 or DINO v1, CLS token).
        face_pack: insightface pack for Face-Sim (detector + ArcFace), a key of ``faces.FACE_PACKS``.
        face_choice: Which face of a single-character frame counts: the 'largest' box or the best 'score'.
        face_missing: A frame without a face: its pairs are left out ('skip') or count as 0 ('zero').
        face_scale: Factor on the ArcFace cosine (100 in %).
        face_reference: Reference of Face-Sim(R): the character's 'photos', its discovered 'identity'
            (the identity library's preview sheet), or 'auto' (photos when the story has them, else the identity).
        qalign_model: OneAlign checkpoint for Q-Align-Gen / -Aes (1-5 scale; GPU only).
        detector_model: GroundingDINO finding characters for ViStoryBench's metrics (Hub id or folder).
        detector_caption: Its caption for every character ('character').
        box_threshold: A box counts when its best token probability is above this.
        text_threshold: GroundingDINO's phrase threshold (its phrases are not used to select boxes).
        adaface_model: AdaFace IR-101 checkpoint ('<hub repo>/<file>' or a file) for human characters.
        facenet_model: FaceNet Inception-ResNet-v1 checkpoint ('<hub repo>/<file>' or a file).
        face_ensemble: How ArcFace, AdaFace and FaceNet cosines combine: 'average' (their config) or
            'weighted' (0.4, 0.4, 0.2).
        csd_model: CSD ViT-L/14 weights for cross_csd / self_csd ('<hub repo>/<file>', a URL or a file).
        aesthetic_model: Aesthetic Predictor V2.5 head weights ('<hub repo>/<file>', a URL or a file).
        siglip_model: The SigLIP backbone under that head (Hub id or folder).
        inception_model: Inception-v3 weights for the Inception Score ('<hub repo>/<file>', a URL or a file).
        aggregation: Per-frame metrics averaged per story, then over stories ('story', the 1P1S-lineage
            script), or over all frames at once ('flat', ConsiStory's CLIP score). Pairwise metrics are
            always per story, then over stories.
        benchmark: The benchmark the protocol's published numbers come from.
        sources: Where the protocol comes from (papers, code), for the record.
        caveats: What is inferred or differs from the paper; printed under every table.
    """

    name: str
    description: str
    metrics: tuple[str, ...]
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_i_model: str | None = None
    clip_t_text: str = "{prompt}"
    clip_t_c_text: str = "{context}"
    text_scale: float = PERCENT
    text_clamp: bool = False
    image_pairing: Pairing = "pairwise"
    anchor_frame: int = 0
    image_scale: float = PERCENT
    dino_model: str = DEFAULT_DINO_CHECKPOINT
    face_pack: str = "antelopev2"
    face_choice: FaceChoice = "largest"
    face_missing: MissingFacePolicy = "skip"
    face_scale: float = PERCENT
    face_reference: FaceReference = "auto"
    qalign_model: str = "q-future/one-align"
    aggregation: Aggregation = "story"
    # ViStoryBench's character metrics (CIDS, OCCM, copy-paste; evaluation/vistory_scoring.py)
    detector_model: str = "IDEA-Research/grounding-dino-tiny"
    detector_caption: str = "character"
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    adaface_model: str = "ViStoryBench/VistoryBench_pretrain/adaface/adaface_ir101_webface12m.ckpt"
    facenet_model: str = "ViStoryBench/VistoryBench_pretrain/facenet/20180402-114759-vggface2.pt"
    face_ensemble: Literal["average", "weighted"] = "average"
    # ViStoryBench's style, quality and diversity metrics (evaluation/vistory_run.py, docs/metrics-vistorybench.md)
    csd_model: str = "ViStoryBench/VistoryBench_pretrain/csd/csd_vit-large.pth"
    aesthetic_model: str = "ViStoryBench/VistoryBench_pretrain/aesthetic_predictor/aesthetic_predictor_v2_5.pth"
    siglip_model: str = "google/siglip-so400m-patch14-384"
    inception_model: str = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
    benchmark: str = "ConsiStory-Human"
    sources: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"eval preset '{self.name}'"
        if not self.metrics:
            raise SettingsError(f"{where} has no metrics. Fix: keep at least one of {', '.join(METRICS)}.")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise SettingsError(f"{where}: unknown metric(s) {', '.join(unknown)}. Fix: use {', '.join(METRICS)}.")
        for field_name in ("clip_t_text", "clip_t_c_text"):
            bad = template_fields(getattr(self, field_name)) - set(TEXT_FIELDS)
            if bad:
                raise SettingsError(
                    f"{where}: {field_name} uses unknown placeholder(s) {', '.join(sorted(bad))}. "
                    f"Fix: use {', '.join('{' + f + '}' for f in TEXT_FIELDS)}."
                )
        if self.face_ensemble not in ("average", "weighted"):
            raise SettingsError(
                f"{where}: face_ensemble '{self.face_ensemble}' is not known. Fix: use average or weighted."
            )
        for field_name in ("box_threshold", "text_threshold"):
            if not 0 <= getattr(self, field_name) <= 1:
                raise SettingsError(f"{where}: {field_name} must be a probability, got {getattr(self, field_name)}.")
        for field_name in ("text_scale", "image_scale", "face_scale"):
            if getattr(self, field_name) <= 0:
                raise SettingsError(f"{where}: {field_name} must be positive, got {getattr(self, field_name)}.")
        if self.face_pack not in FACE_PACK_NAMES:
            raise SettingsError(
                f"{where}: face_pack '{self.face_pack}' is not known. Fix: use {', '.join(FACE_PACK_NAMES)}."
            )
        for field_name, kind in (
            ("image_pairing", Pairing),
            ("face_missing", MissingFacePolicy),
            ("face_choice", FaceChoice),
            ("face_reference", FaceReference),
            ("aggregation", Aggregation),
        ):
            if getattr(self, field_name) not in typing.get_args(kind):
                raise SettingsError(
                    f"{where}: {field_name} '{getattr(self, field_name)}' is not known. "
                    f"Fix: use one of {', '.join(typing.get_args(kind))}."
                )
        if self.anchor_frame < 0:
            raise SettingsError(f"{where}: anchor_frame must be 0 or more, got {self.anchor_frame}.")

    @property
    def ordered_metrics(self) -> tuple[str, ...]:
        """The preset's metrics in table order."""
        return tuple(m for m in METRICS if m in self.metrics)

    @property
    def clip_i_checkpoint(self) -> str:
        return self.clip_i_model or self.clip_model

    def scale_of(self, metric: str) -> float | None:
        """The factor applied to the cosine of ``metric`` (None for Q-Align, on its own 1-5 scale)."""
        if metric in ("clip_t", "clip_t_c"):
            return self.text_scale
        if metric in ("clip_i", "dino_i"):
            return self.image_scale
        if metric in ("face_sim", "face_sim_r"):
            return self.face_scale
        return None

    def unit_of(self, metric: str) -> str:
        """'%' for metrics scaled by 100, '1-5' for Q-Align, '' otherwise."""
        if metric in QALIGN_TASKS:
            return "1-5"
        return "%" if self.scale_of(metric) == PERCENT else ""

    def header_of(self, metric: str) -> str:
        """Column header in the papers' style: ``CLIP-T ↑ (%)``."""
        info = METRICS[metric]
        arrow = "↑" if info.higher_is_better else "↓"
        unit = " (%)" if self.unit_of(metric) == "%" else ""
        return f"{info.label} {arrow}{unit}"

    def customize(
        self,
        *,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> EvalPreset:
        """A copy with metrics added / removed and fields overridden (string values are converted).

        Raises:
            SettingsError: An unknown metric or field, a value of the wrong type, or no metric left.
        """
        from storycast.settings import convert_value

        add, remove = metric_names(add), metric_names(remove)
        metrics = tuple(m for m in (*self.metrics, *add) if m not in remove)
        changes: dict[str, Any] = {"metrics": tuple(dict.fromkeys(metrics))}
        hints = typing.get_type_hints(EvalPreset)
        editable = {f.name for f in dataclasses.fields(self)} - {"name", "metrics", "sources", "caveats"}
        for key, raw in (overrides or {}).items():
            key = str(key).replace("-", "_")
            if key not in editable:
                raise SettingsError(
                    f"eval setting '{key}' is not known. Fix: use one of {', '.join(sorted(editable))}."
                )
            changes[key] = convert_value(raw, hints[key], f"eval setting {key}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


# ----------------------------------------------------------------------------------------------
# The papers' protocols

IDENTITYSTORY = EvalPreset(
    name="identitystory",
    description="IdentityStory (AAAI 2026) on ConsiStory-Human: CLIP-T, CLIP-T-C, CLIP-I, Face-Sim in %, Q-Align 1-5",
    metrics=("clip_t", "clip_t_c", "clip_i", "face_sim", "qalign_gen", "qalign_aes"),
    clip_model="openai/clip-vit-base-patch32",
    clip_t_text="{prompt}",
    clip_t_c_text="{context}",
    text_scale=PERCENT,
    image_pairing="pairwise",
    image_scale=PERCENT,
    face_pack="antelopev2",
    face_missing="skip",
    face_scale=PERCENT,
    aggregation="story",
    benchmark="ConsiStory-Human",
    sources=(
        "IdentityStory poster, AAAI 2026 (arXiv 2512.23519): metric names, units, published numbers",
        "Correr-Zhou/IdentityStory main.py: insightface antelopev2 at det_size 640 (generation side)",
        "docs/metrics.md §1.2 and §6.2",
    ),
    caveats=(
        "The paper's metric section could not be read: the CLIP checkpoint (ViT-B/32 assumed from the value range), "
        "the face pack (antelopev2, the one its code loads), pairwise CLIP-I and Face-Sim, the missing-face rule "
        "(skip) and the CLIP-T-C text (the frame's context phrase) are inferred (docs/metrics.md §1.2, §7).",
        "No background removal before CLIP-I.",
        "Multi-character Face-Sim: faces are matched to characters (Hungarian, as ViStoryBench) and averaged "
        "over characters; the paper publishes no multi-character numbers.",
    ),
)

ONE_PROMPT_ONE_STORY = EvalPreset(
    name="1prompt1story",
    description="1Prompt1Story (ICLR 2025) on ConsiStory+: CLIP-T as 2.5*cos (ViT-B/32), CLIP-I as cos (ViT-B/16)",
    metrics=("clip_t", "clip_i"),
    clip_model="openai/clip-vit-base-patch32",
    clip_i_model="openai/clip-vit-base-patch16",
    clip_t_text="A photo depicts {prompt}",
    clip_t_c_text="{context}",
    text_scale=HESSEL_W,
    text_clamp=False,
    image_pairing="pairwise",
    image_scale=1.0,
    aggregation="story",
    benchmark="ConsiStory+",
    sources=(
        "1Prompt1Story, ICLR 2025 (arXiv 2501.13554) §4.1 and Table 1",
        "the 1P1S-lineage evaluation script (docs/metrics.md §3.3): ViT-B/32 CLIP-T with Hessel's prompt, "
        "ViT-B/16 CLIP-I, per-story mean then mean over stories",
    ),
    caveats=(
        "The paper removes backgrounds with CarveKit and fills them with noise before CLIP-I; storycast keeps "
        "the background (CarveKit needs torchvision), so CLIP-I is not directly comparable.",
        "DreamSim is not computed (it needs torchvision, timm and open_clip).",
        "The published numbers are on ConsiStory+, not ConsiStory-Human.",
    ),
)

CONSISTORY = EvalPreset(
    name="consistory",
    description="ConsiStory (SIGGRAPH 2024): Hessel CLIP score 2.5*max(cos,0) over all images; CLIP-I per set",
    metrics=("clip_t", "clip_i"),
    clip_model="openai/clip-vit-large-patch14",
    clip_t_text="A photo depicts {prompt}",
    clip_t_c_text="{context}",
    text_scale=HESSEL_W,
    text_clamp=True,
    image_pairing="pairwise",
    image_scale=1.0,
    aggregation="flat",
    benchmark="ConsiStory (100 prompt sets)",
    sources=("ConsiStory, SIGGRAPH 2024 / TOG 43(4) (arXiv 2402.03286) §5.3, App. D and F",),
    caveats=(
        "The CLIP checkpoint is not stated; ViT-L/14 is assumed because 2.5*cos lands on the paper's plotted "
        "0.55-0.65 range with it (ViT-B/32 would give ~0.8).",
        "Subject consistency in the paper is DreamSim with DreamSim's background removal; storycast reports "
        "pairwise CLIP-I in its place (DreamSim needs torchvision, timm and open_clip).",
        "The paper only plots its numbers; there is no published table to compare with.",
    ),
)

VISTORYBENCH = EvalPreset(
    name="vistorybench",
    description="ViStoryBench (CVPR 2026): CSD, CIDS cross/self, aesthetics, Inception Score, OCCM, prompt alignment "
    "(a VLM judge), copy-paste",
    metrics=tuple(m.name for m in VISTORY_METRIC_INFO),
    clip_model="openai/clip-vit-large-patch14",
    face_pack="antelopev2",
    benchmark="ViStoryBench",
    sources=(
        "ViStoryBench/vistorybench @ 514cc31: vistorybench/bench/content/cids_evaluator.py (CIDS, OCCM, copy-paste, "
        "single-character action), bench/style/csd_evaluator.py, bench/quality/aesthetic_evaluator.py, "
        "bench/diversity/{diversity_evaluator,inception_score}.py, bench/prompt_align/prompt_align_evaluator.py, "
        "config.yaml (thresholds, ensemble), vistorybench/result_management/manager.py (mean over stories), "
        "utils/summarize_leaderboard.py (the leaderboard's columns and its Prompt Align Avg)",
        "AdaFace net.py and inference.py (mk-minchul/AdaFace @ c60eaa7); facexlib face_restoration_helper.py",
        "docs/metrics.md, section ViStoryBench; docs/metrics-vistorybench.md",
    ),
    caveats=(
        "GroundingDINO runs through transformers (IDEA-Research/grounding-dino-tiny, the Swin-T OGC weights "
        "converted), not the groundingdino package.",
        "AdaFace and FaceNet see the face SCRFD (antelopev2) finds, aligned to facexlib's FFHQ template by least "
        "squares; theirs detects with facexlib's RetinaFace-R50 at 0.97 and fits with cv2 LMEDS.",
        "Per-crop features are not cached; the judge's answers are (by model and messages).",
        "The Inception Score is one number per results row (a method's stories of one split), over all their shots, "
        "as theirs is one per run; prompt alignment is skipped (the reason recorded) without --judge-url.",
    ),
)

EVAL_PRESETS: dict[str, EvalPreset] = {p.name: p for p in (IDENTITYSTORY, ONE_PROMPT_ONE_STORY, CONSISTORY)}
EVAL_PRESETS[VISTORYBENCH.name] = VISTORYBENCH
EVAL_PRESET_ALIASES = {"1p1s": "1prompt1story", "is": "identitystory"}
DEFAULT_EVAL_PRESET = "identitystory"


def get_eval_preset(name: str) -> EvalPreset:
    """The preset registered under ``name`` (or an alias such as '1p1s')."""
    key = EVAL_PRESET_ALIASES.get(name.lower(), name.lower())
    if key not in EVAL_PRESETS:
        raise SettingsError(f"eval preset '{name}' is not known. Fix: use one of {', '.join(EVAL_PRESETS)}.")
    return EVAL_PRESETS[key]


def resolve_preset(
    name: str | EvalPreset = DEFAULT_EVAL_PRESET,
    *,
    tiny: bool = False,
    gpu: bool = True,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> EvalPreset:
    """A preset by name, customised as on the command line.

    With ``tiny`` extractors, or without a GPU (``gpu=False``), Q-Align is left out unless ``add`` asks for
    it: OneAlign is an 8-billion-parameter GPU model, and a tiny stand-in only exercises the formula.
    """
    preset = get_eval_preset(name) if isinstance(name, str) else name
    add = metric_names(add)
    remove = metric_names(remove)
    if tiny or not gpu:
        dropped = [m for m in QALIGN_TASKS if m not in add and m in preset.metrics and m not in remove]
        if dropped and not tiny:
            logger.warning("no CUDA device: Q-Align is left out (add it with --with qalign)")
        remove = (*remove, *dropped)
    return preset.customize(add=add, remove=remove, overrides=overrides)
