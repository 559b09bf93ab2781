"""Pictures of scores, drawn with PIL (no plotting dependency): contact sheets and bar charts.

- ``render_contact_sheet``: a story's frames in a grid with each frame's scores under it and the
  story's values in a band at the bottom (frames without a face say so).
- ``render_metric_chart``: one panel per metric, one horizontal bar per method row, the papers'
  published rows in a lighter shade, the value at the end of each bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw

from storycast.evaluation.presets import METRICS, EvalPreset
from storycast.evaluation.report import chart_rows, decimals_of, format_value
from storycast.evaluation.scoring import StoryScores
from storycast.runs.storyboard import BACKGROUND, MUTED, TEXT, default_font, render_storyboard, wrap_text

PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)
PUBLISHED_COLOR = (170, 170, 170)
FACE_METRICS = ("face_sim", "face_sim_r")


def _frame_caption(values: Mapping[str, float], preset: EvalPreset, faces_found: int | None) -> str:
    parts = []
    for metric in preset.ordered_metrics:
        label = METRICS[metric].label
        if metric in values:
            parts.append(f"{label} {format_value(values[metric], decimals_of(preset, metric))}")
        elif metric in FACE_METRICS:
            parts.append(f"{label} {'no face' if faces_found == 0 else '–'}")
        else:
            parts.append(f"{label} –")
    return " · ".join(parts)


def render_contact_sheet(
    images: Sequence[Image.Image],
    scores: StoryScores,
    preset: EvalPreset,
    *,
    title: str = "",
    columns: int | None = None,
) -> Image.Image:
    """The frames with their scores underneath and the story's values at the bottom."""
    found = scores.details.get("faces_found") or [None] * len(images)
    captions = [_frame_caption(frame, preset, found[i]) for i, frame in enumerate(scores.frames)]
    grid = render_storyboard(images, captions, title=title, columns=columns, caption_lines=3)
    font_size = max(14, grid.width // 70)
    font = default_font(font_size)
    story_line = "Story: " + " · ".join(
        f"{METRICS[m].label} {format_value(scores.values.get(m), decimals_of(preset, m))}"
        for m in preset.ordered_metrics
    )
    lines = wrap_text(f"{story_line}   (protocol: {preset.name})", font, grid.width - 2 * font_size, 3)
    band = round(font_size * 1.4) * len(lines) + font_size
    sheet = Image.new("RGB", (grid.width, grid.height + band), BACKGROUND)
    sheet.paste(grid, (0, 0))
    draw = ImageDraw.Draw(sheet)
    draw.line((font_size, grid.height, grid.width - font_size, grid.height), fill=MUTED, width=1)
    for number, line in enumerate(lines):
        draw.text(
            (font_size, grid.height + font_size // 2 + number * round(font_size * 1.4)), line, fill=TEXT, font=font
        )
    return sheet


def render_metric_chart(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Mapping[str, Any]],
    *,
    title: str = "",
    panels_per_row: int = 3,
) -> Image.Image:
    """Horizontal bar chart per metric.

    Args:
        rows: Each ``{"label": str, "values": {metric: value or None}, "published": bool}``.
        columns: Each ``{"metric", "header", "decimals"}`` (``report.columns_of``).
        title: Printed above the panels.
        panels_per_row: Panels side by side.
    """
    if not rows or not columns:
        raise ValueError("a chart needs at least one row and one metric")
    font, small, big = default_font(14), default_font(12), default_font(20)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = min(260, max(int(measure.textlength(r["label"], font=small)) for r in rows) + 12)
    bar_area, value_width = 240, 64
    bar_height, bar_gap, margin = 18, 6, 16
    panel_width = label_width + bar_area + value_width
    panel_height = 34 + len(rows) * (bar_height + bar_gap) + 8
    n_panels = len(columns)
    per_row = min(panels_per_row, n_panels)
    panel_rows = math.ceil(n_panels / per_row)
    title_height = 40 if title else 0
    width = margin * 2 + per_row * panel_width + (per_row - 1) * margin
    height = margin * 2 + title_height + panel_rows * panel_height + (panel_rows - 1) * margin
    chart = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(chart)
    if title:
        draw.text((margin, margin), title, fill=TEXT, font=big)

    colors: dict[str, tuple[int, int, int]] = {}
    for row in rows:
        if not row.get("published"):
            colors.setdefault(row["label"], PALETTE[len(colors) % len(PALETTE)])

    for number, column in enumerate(columns):
        metric = column["metric"]
        px = margin + (number % per_row) * (panel_width + margin)
        py = margin + title_height + (number // per_row) * (panel_height + margin)
        draw.text((px, py), column["header"].replace("↑", "").replace("↓", "(lower is better)"), fill=TEXT, font=font)
        values = [row["values"].get(metric) for row in rows]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        low = min([0.0, *finite])
        high = max([0.0, *finite]) or 1.0
        span = (high - low) or 1.0
        zero_x = px + label_width + round(bar_area * (0.0 - low) / span)
        top = py + 28
        draw.line((zero_x, top - 2, zero_x, top + len(rows) * (bar_height + bar_gap)), fill=MUTED, width=1)
        for index, (row, value) in enumerate(zip(rows, values, strict=True)):
            y = top + index * (bar_height + bar_gap)
            label = wrap_text(row["label"], small, label_width - 8, 1)[0]
            draw.text((px, y + 2), label, fill=MUTED if row.get("published") else TEXT, font=small)
            if value is None or math.isnan(value):
                draw.text((px + label_width + 4, y + 2), "n/a", fill=MUTED, font=small)
                continue
            end_x = px + label_width + round(bar_area * (value - low) / span)
            x0, x1 = sorted((zero_x, end_x))
            color = PUBLISHED_COLOR if row.get("published") else colors[row["label"]]
            draw.rectangle((x0, y, max(x1, x0 + 1), y + bar_height), fill=color)
            text = format_value(value, column["decimals"])
            draw.text((px + label_width + bar_area + 6, y + 2), text, fill=TEXT, font=small)
    return chart


def render_results_chart(document: Mapping[str, Any]) -> Image.Image:
    """The chart of a results.json or comparison document (its rows and the published rows)."""
    kind = "Comparison" if document.get("kind") == "storycast-comparison" else "Results"
    title = f"{kind} · protocol {document.get('preset', '')}"
    if (document.get("evaluation") or {}).get("tiny"):
        title += " · tiny extractors (meaningless numbers)"
    return render_metric_chart(chart_rows(document), document["columns"], title=title)
