"""Results and comparisons as JSON and as Markdown tables in the layout of the papers' tables.

- ``build_results``: scored runs -> the content of ``results.json``: one row per (method, model, split),
  a pooled row per method when there are several splits, one row per story, the published rows of
  the preset's paper, and the protocol, extractors and versions that produced the numbers.
- ``results_markdown``: that, as ``results.md`` (summary table first, then one table per split).
- ``compare_results`` / ``comparison_markdown``: several ``results.json`` side by side (method rows,
  metric columns, the papers' rows alongside), refusing to mix protocols or extractors.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storycast.errors import RunFolderError, SettingsError
from storycast.evaluation.presets import METRICS, QALIGN_TASKS, EvalPreset
from storycast.evaluation.published import published_rows
from storycast.evaluation.runfolders import CONTACT_SHEET_NAME, RESULTS_JSON, EvalRun, read_json
from storycast.evaluation.scoring import MetricSummary, StoryScores, face_coverage, json_number, summarize

RESULTS_FORMAT = 1
ALL_SPLITS = "all"
TINY_WARNING = (
    "Tiny random-weight extractors (`--preset tiny`): these numbers only show that the pipeline runs; "
    "they say nothing about the images."
)
AGGREGATION_TEXT = {
    "story": "per-story mean, then the unweighted mean over stories",
    "flat": "per-frame metrics averaged over all frames at once; pairwise metrics per story, then over stories",
}


@dataclass
class ScoredRun:
    """A run with its scores; ``reused`` when its up-to-date ``scores.json`` was read instead of recomputed."""

    run: EvalRun
    scores: StoryScores
    reused: bool = False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def decimals_of(preset: EvalPreset, metric: str) -> int:
    """Digits after the point, as the papers print them: 1 for %, 2 for Q-Align, 4 for plain cosines."""
    if metric in QALIGN_TASKS:
        return 2
    return 1 if preset.unit_of(metric) == "%" else 4


def columns_of(preset: EvalPreset) -> list[dict[str, Any]]:
    return [
        {
            "metric": m,
            "label": METRICS[m].label,
            "header": preset.header_of(m),
            "group": METRICS[m].group,
            "unit": preset.unit_of(m),
            "scale": preset.scale_of(m),
            "decimals": decimals_of(preset, m),
        }
        for m in preset.ordered_metrics
    ]


def format_value(value: float | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def _group_label(method: str, model: str, ambiguous: bool) -> str:
    return f"{method} ({model})" if ambiguous else method


def build_results(
    root: Path,
    scored: Sequence[ScoredRun],
    preset: EvalPreset,
    info: Mapping[str, Any],
    *,
    skipped: Sequence[Mapping[str, str]] = (),
    extra: Mapping[str, Any] | None = None,
    pooled: Callable[[Sequence[ScoredRun], dict[str, MetricSummary]], Mapping[str, MetricSummary]] | None = None,
) -> dict[str, Any]:
    """The content of results.json for the runs ``scored`` under ``root``.

    ``pooled(runs, summaries)`` gives a row's metrics that are not means of its stories' values (ViStoryBench's
    Inception Score over all the row's frames); they replace those ``summaries`` hold.
    """
    groups: dict[tuple[str, str, str], list[ScoredRun]] = {}
    for item in scored:
        groups.setdefault((item.run.method, item.run.model, item.run.split), []).append(item)
    models_of: dict[str, set[str]] = {}
    for method, model, _ in groups:
        models_of.setdefault(method, set()).add(model)

    def row(method: str, model: str, split: str, items: Sequence[ScoredRun]) -> dict[str, Any]:
        stories = [i.scores for i in items]
        summaries = summarize(stories, preset)
        if pooled is not None:
            summaries.update(pooled(items, summaries))
        return {
            "label": _group_label(method, model, len(models_of[method]) > 1),
            "method": method,
            "model": model,
            "split": split,
            "stories": len(items),
            "frames": sum(len(s.frames) for s in stories),
            "metrics": {m: s.to_dict() for m, s in summaries.items()},
            "face_coverage": json_number(face_coverage(stories)),
        }

    rows = [row(*key, items) for key, items in sorted(groups.items())]
    splits_of: dict[tuple[str, str], list[ScoredRun]] = {}
    for (method, model, _), items in sorted(groups.items()):
        splits_of.setdefault((method, model), []).extend(items)
    for (method, model), items in splits_of.items():
        if len({i.run.split for i in items}) > 1:
            rows.append(row(method, model, ALL_SPLITS, items))
    stories = [
        {
            "run": item.run.path.relative_to(root).as_posix() if item.run.path != root else ".",
            "title": item.run.title,
            "method": item.run.method,
            "model": item.run.model,
            "split": item.run.split,
            "frames": len(item.scores.frames),
            "values": {m: json_number(v) for m, v in item.scores.values.items()},
            "face_coverage": (item.scores.details.get("face_coverage") or {}).get("coverage"),
            "contact_sheet": (item.run.path / CONTACT_SHEET_NAME).is_file(),
            "reused": item.reused,
        }
        for item in scored
    ]
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "kind": "storycast-results",
        "created": _now(),
        "root": str(root),
        "preset": preset.name,
        "aggregation": preset.aggregation,
        "columns": columns_of(preset),
        "groups": rows,
        "stories": stories,
        "skipped": [dict(s) for s in skipped],
        "metric_notes": metric_notes(scored),
        "published": [r.to_dict() for r in published_rows(preset.name, _benchmarks_of(scored))],
        "evaluation": dict(info),
    }
    results["drawn_with"] = drawn_with(scored)
    if extra:
        results["benchmark"] = dict(extra)
    return results


def metric_notes(scored: Sequence[ScoredRun]) -> dict[str, str]:
    """Why a metric of the protocol has no value (e.g. prompt alignment without a judge), from the runs' scores."""
    notes: dict[str, str] = {}
    for item in scored:
        for metric, reason in (item.scores.details.get("skipped_metrics") or {}).items():
            notes.setdefault(metric, reason)
    return notes


def _benchmarks_of(scored: Sequence[ScoredRun]) -> set[tuple[str | None, str]]:
    """(story format, suite) of each run, from its manifest: which published rows belong beside them."""
    return {((item.run.manifest.get("story") or {}).get("source_format"), item.run.split) for item in scored}


def drawn_with(scored: Sequence[ScoredRun]) -> dict[str, Any]:
    """How the runs were drawn where it changes what the numbers mean: their seeds, and whether masks fell back
    from the authors' detector to attention maps (from each run's manifest)."""
    policies, seeds, fallback = set(), set(), 0
    for item in scored:
        generation = item.run.manifest.get("generation") or {}
        policies.add(generation.get("seed_policy") or "per-frame")
        if isinstance(generation.get("seed"), int):
            seeds.add(generation["seed"])
        frames = item.run.manifest.get("frames") or []
        if any(isinstance(f, dict) and (f.get("metadata") or {}).get("mask_fallback") for f in frames):
            fallback += 1
    found = {
        "seed_policies": sorted(policies),
        "seeds": sorted(seeds),
        "mask_fallback_runs": fallback,
        "runs": len(scored),
    }
    limits = [item.run.manifest.get("limits") for item in scored]
    if any(limits):  # a benchmark's per-frame fallbacks (storycast.methods.limits)
        from storycast.methods.limits import count_limits

        found["limits"] = count_limits(record for record in limits if isinstance(record, dict))
    return found


# ----------------------------------------------------------------------------------------------
# Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _metric_cells(values: Mapping[str, Any], columns: Sequence[Mapping[str, Any]]) -> list[str]:
    cells = []
    for column in columns:
        value = values.get(column["metric"])
        if isinstance(value, Mapping):
            value = value.get("mean")
        cells.append(format_value(value, column["decimals"]))
    return cells


def _published_cells(published: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [f"*{p['method']}* ({p['venue']})", f"{p['split'] or '–'} (paper)", "–", *_metric_cells(p["values"], columns)]
        for p in published
    ]


def _extractor_lines(evaluation: Mapping[str, Any]) -> list[str]:
    names = {"clip": "CLIP", "clip_i": "CLIP for CLIP-I", "dino": "DINO", "faces": "faces", "qalign": "Q-Align",
             "detector": "GroundingDINO", "arcface": "ArcFace", "adaface": "AdaFace", "facenet": "FaceNet", "csd": "CSD",
             "aesthetic": "Aesthetic Predictor V2.5", "inception": "Inception-v3"}  # fmt: skip
    parts = []
    for role, identity in (evaluation.get("extractors") or {}).items():
        source = identity.get("source", "?")
        backbone = f" on `{identity['backbone']}`" if identity.get("backbone") else ""
        parts.append(f"{names.get(role, role)} `{source}`{backbone}")
    return parts


def _header_lines(results: Mapping[str, Any], title: str) -> list[str]:
    evaluation = results.get("evaluation") or {}
    preset = evaluation.get("preset") or {}
    packages = ((evaluation.get("environment") or {}).get("packages")) or {}
    versions = ", ".join(
        f"{k} {packages[k]}" for k in ("storycast", "torch", "transformers", "onnxruntime") if packages.get(k)
    )
    lines = [f"# {title}", ""]
    if evaluation.get("tiny"):
        lines += [f"> **{TINY_WARNING}**", ""]
    judge = evaluation.get("judge")
    judged = [f"- **Judge**: `{judge['judge_model']}` at {judge['judge_url']}"] if judge else []
    lines += [
        f"- **Protocol**: `{results.get('preset')}`: {preset.get('description', '')}",
        f"- **Extractors**: {'; '.join(_extractor_lines(evaluation)) or '–'}",
        *judged,
        f"- **Aggregation**: {AGGREGATION_TEXT.get(results.get('aggregation', 'story'), '')}",
        f"- **Made**: {results.get('created', '')}{'; ' + versions if versions else ''}",
        "",
    ]
    return lines


def _notes(results: Mapping[str, Any]) -> list[str]:
    evaluation = results.get("evaluation") or {}
    preset = evaluation.get("preset") or {}
    lines: list[str] = []
    published = results.get("published") or []
    if published:
        sources = sorted({p["source"] for p in published})
        notes = sorted({p["note"] for p in published if p.get("note")})
        lines += ["Published rows: " + "; ".join(sources) + (f" ({'; '.join(notes)})" if notes else "") + ".", ""]
    drawn = results.get("drawn_with") or {}
    if drawn.get("seed_policies"):
        seeds = ", ".join(str(s) for s in drawn.get("seeds", [])) or "?"
        rule = {"same": "every frame from the story seed", "per-frame": "frame i from seed + i"}
        policies = "; ".join(f"{p} ({rule.get(p, p)})" for p in drawn["seed_policies"])
        lines += [f"Seeds: {policies}; story seed(s) {seeds}.", ""]
    if drawn.get("mask_fallback_runs"):
        lines += [
            f"Masks: {drawn['mask_fallback_runs']} of {drawn['runs']} run(s) used the class words' attention maps "
            "because GroundingDINO + SAM were not on the machine (`mask_provider=auto`): not the authors' masks.",
            "",
        ]
    limits = drawn.get("limits")
    if limits:
        kinds = ", ".join(f"{name} {count}" for name, count in limits["by_limit"].items())
        lines += [
            f"Limits: {limits['frames_changed']} frame(s) drawn by a fallback where the method could not take them as "
            f"they are, {limits['frames_noted']} frame(s) with a limit in all ({kinds}); each frame's in its run's "
            "manifest.json (`limits`).",
            "",
        ]
    notes = results.get("metric_notes") or {}
    for reason in dict.fromkeys(notes.values()):
        names = ", ".join(f"`{m}`" for m, r in notes.items() if r == reason)
        lines += [f"Not computed: {names}: {reason}.", ""]
    failed = (results.get("benchmark") or {}).get("failed") or []
    if failed:
        lines += ["Stories not drawn (they could not be read; the others were):", ""]
        lines += [f"- `{f['story']}`: {f['reason']}" for f in failed] + [""]
    caveats = preset.get("caveats") or []
    if caveats:
        lines += ["Caveats of this protocol:", ""] + [f"- {c}" for c in caveats] + [""]
    return lines


def summary_table(results: Mapping[str, Any]) -> list[str]:
    """The summary table of a results document: one row per method and split, then the published rows."""
    columns = results["columns"]
    header = ["Method", "Split", "Stories", *[c["header"] for c in columns]]
    rows = [
        [g["label"], g["split"] or "–", str(g["stories"]), *_metric_cells(g["metrics"], columns)]
        for g in results["groups"]
    ]
    rows += _published_cells(results.get("published") or [], columns)
    return _table(header, rows, numeric_from=2)


def results_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the summary in the papers' layout, face coverage, then each split story by story."""
    columns = results["columns"]
    lines = _header_lines(results, "Evaluation results")
    lines += ["## Summary", "", *summary_table(results), ""]
    lines += _notes(results)

    coverage = [g for g in results["groups"] if g.get("face_coverage") is not None]
    if coverage:
        lines += [
            "Faces found (share of expected character faces): "
            + ", ".join(f"{g['label']} {g['split'] or '–'} {100 * g['face_coverage']:.0f}%" for g in coverage)
            + ".",
            "",
        ]

    by_group: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for story in results["stories"]:
        by_group.setdefault((story["method"], story["model"], story["split"]), []).append(story)
    labels = {(g["method"], g["model"], g["split"]): g["label"] for g in results["groups"]}
    for key, stories in by_group.items():
        label = labels.get(key, key[0])
        split = f" · {key[2]}" if key[2] else ""
        lines += [f"## Stories: {label}{split}", ""]
        story_rows = [
            [
                f"[{s['title']}]({s['run']}/{CONTACT_SHEET_NAME})" if s.get("contact_sheet") else s["title"],
                str(s["frames"]),
                *_metric_cells(s["values"], columns),
            ]
            for s in stories
        ]
        lines += [*_table(["Story", "Frames", *[c["header"] for c in columns]], story_rows, numeric_from=1), ""]
    if results.get("skipped"):
        lines += [
            "Left out (not finished): " + ", ".join(f"`{s['run']}` ({s['reason']})" for s in results["skipped"]),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Comparison of several results


def _protocol_signature(results: Mapping[str, Any]) -> dict[str, Any]:
    evaluation = results.get("evaluation") or {}
    preset = dict(evaluation.get("preset") or {})
    extractors = {role: identity.get("source") for role, identity in (evaluation.get("extractors") or {}).items()}
    return {"preset": preset, "extractors": extractors}


def _run_labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def compare_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Several evaluated folders side by side (their ``results.json``), with the papers' rows.

    Raises:
        RunFolderError: A folder has no results.json.
        SettingsError: The folders were scored with different protocols or extractors.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SettingsError("nothing to compare. Fix: pass at least one evaluated folder to --compare.")
    loaded = []
    for path in paths:
        results = read_json(path / RESULTS_JSON) if path.is_dir() else read_json(path)
        if results is None or results.get("kind") != "storycast-results":
            raise RunFolderError(
                f"'{path}' has no readable {RESULTS_JSON}. Fix: run `storycast evaluate {path}` first."
            )
        loaded.append(results)
    reference = _protocol_signature(loaded[0])
    for path, results in zip(paths[1:], loaded[1:], strict=True):
        signature = _protocol_signature(results)
        if signature != reference:
            changed = sorted(
                k
                for k in set(reference["preset"]) | set(signature["preset"])
                if reference["preset"].get(k) != signature["preset"].get(k)
            )
            if signature["extractors"] != reference["extractors"]:
                changed.append("extractors")
            raise SettingsError(
                f"'{path}' was scored differently from '{paths[0]}' ({', '.join(changed)} differ), so their numbers "
                "are not comparable. Fix: rescore both with the same --eval-preset and model flags."
            )
    rows = []
    for label, results in zip(_run_labels(paths), loaded, strict=True):
        for group in results["groups"]:
            rows.append({"run": label, **group})
    first = loaded[0]
    evaluation = {k: v for k, v in (first.get("evaluation") or {}).items() if k != "environment"}
    return {
        "format": RESULTS_FORMAT,
        "kind": "storycast-comparison",
        "created": _now(),
        "preset": first["preset"],
        "aggregation": first.get("aggregation", "story"),
        "columns": first["columns"],
        "runs": [{"label": label, "path": str(p)} for label, p in zip(_run_labels(paths), paths, strict=True)],
        "rows": rows,
        "published": first.get("published") or [],
        "evaluation": evaluation,
    }


def comparison_table(comparison: Mapping[str, Any]) -> list[str]:
    """One row per method and split of each run folder, then the papers' rows."""
    columns = comparison["columns"]
    header = ["Method", "Split", "Stories", *[c["header"] for c in columns]]
    rows = [
        [f"{r['label']} [{r['run']}]", r["split"] or "–", str(r["stories"]), *_metric_cells(r["metrics"], columns)]
        for r in comparison["rows"]
    ]
    rows += _published_cells(comparison.get("published") or [], columns)
    return _table(header, rows, numeric_from=2)


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """``comparison.md``: the comparison table with the protocol, runs, sources and caveats."""
    lines = _header_lines(comparison, "Comparison")
    lines += [*comparison_table(comparison), ""]
    lines += ["Runs: " + ", ".join(f"`{r['label']}` = `{r['path']}`" for r in comparison["runs"]) + ".", ""]
    lines += _notes(comparison)
    return "\n".join(lines).rstrip() + "\n"


def chart_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Bars of the chart of a results or comparison document: its rows, then the published ones."""
    rows = document.get("groups") if "groups" in document else document.get("rows")
    out = []
    for row in rows or []:
        parts = [row["label"]]
        if row.get("run"):
            parts.insert(0, row["run"])
        if row.get("split"):
            parts.append(row["split"])
        values = {m: (v or {}).get("mean") for m, v in row["metrics"].items()}
        out.append({"label": " · ".join(parts), "values": values, "published": False})
    for p in document.get("published") or []:
        out.append({"label": f"{p['method']} (paper)", "values": dict(p["values"]), "published": True})
    return out
