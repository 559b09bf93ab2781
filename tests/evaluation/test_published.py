"""The papers' published rows: which ones a results table shows (the runs' benchmark decides), and ViStoryBench's
leaderboard as its page prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from storycast.evaluation.presets import resolve_preset
from storycast.evaluation.published import VISTORYBENCH_METRICS, published_rows, vistory_split
from storycast.evaluation.report import ScoredRun, build_results
from storycast.evaluation.runfolders import EvalRun
from storycast.evaluation.scoring import StoryScores


def _scored(root: Path, name: str, source_format: str | None, split: str = "") -> ScoredRun:
    """A scored run as the evaluator hands it to the report: its manifest names the story's format."""
    story = {"title": name} if source_format is None else {"title": name, "source_format": source_format}
    manifest = {"method": {"name": "vanilla"}, "model": {"source": "tiny"}, "story": story}
    run = EvalRun(path=root / split / name, manifest=manifest, story=None, frame_files=(), split=split)
    return ScoredRun(run=run, scores=StoryScores(values={}, frames=[]))


def _shown(tmp_path: Path, preset: str, *runs: tuple[str | None, str]) -> list[tuple[str, str]]:
    scored = [_scored(tmp_path, f"s{i}", fmt, split) for i, (fmt, split) in enumerate(runs)]
    results = build_results(tmp_path, scored, resolve_preset(preset, tiny=True), {})
    return [(p["benchmark"], p["split"]) for p in results["published"]]


def test_vistory_runs_are_not_shown_beside_consistory_human_rows(tmp_path):
    assert _shown(tmp_path, "identitystory", ("vistory", "ViStoryBench")) == []
    assert _shown(tmp_path, "1prompt1story", ("vistory", "ViStoryBench")) == []


@pytest.mark.parametrize("source_format", ["consistory-human", "storycast", None])
def test_other_runs_keep_their_protocol_s_rows(tmp_path, source_format):
    # None: a manifest written before the format was recorded.
    shown = _shown(tmp_path, "identitystory", (source_format, "single"))
    assert shown and {b for b, _ in shown} == {"ConsiStory-Human"}
    assert {b for b, _ in _shown(tmp_path, "1prompt1story", (source_format, "single"))} == {"ConsiStory+"}


def test_a_results_table_without_runs_shows_every_row_of_its_protocol(tmp_path):
    assert len(_shown(tmp_path, "identitystory")) == len(published_rows("identitystory"))


def test_vistorybench_leaderboard_rows_are_the_page_s_numbers():
    rows = published_rows("vistorybench")
    full = {(r.method, r.venue): r for r in rows if r.split == "full"}
    lite = {(r.method, r.venue): r for r in rows if r.split == "lite"}
    assert (len(full), len(lite), len(rows)) == (21, 34, 55)
    assert all(list(r.values) == list(VISTORYBENCH_METRICS) and r.benchmark == "ViStoryBench" for r in rows)
    assert all("leaderboard_detail.astro at commit b35fc30, 2025-12-14" in r.source for r in rows)
    # Spot checks against the page (first, middle and last rows of each table).
    assert full[("CharaConsist", "Base")].values["cross_csd"] == 0.282101728
    assert full[("UNO", "Base")].values == dict(
        zip(
            VISTORYBENCH_METRICS,
            (0.39098354, 0.601657592, 0.48458375, 0.61971, 5.231587752, 12.40049267, 74.23103875, 3.509915128,
             3.246662728, 2.792733115, 2.475, 2.900),
            strict=True,
        )
    )  # fmt: skip
    assert full[("Vlogger", "TextOnly")].values["prompt_align"] == 2.300
    assert lite[("StoryDiffusion", "ImgRef_Photomaker")].values["cids_cross"] == 0.460465
    assert lite[("Sora2", "ALL_ImgRef")].values["occm"] == 81.41773333
    assert lite[("Sora2", "ALL_TextOnly")].values["single_character_action"] == 2.866666667
    assert ("GPT4o", "Base") in lite and ("GPT4o", "Base") not in full  # commercial models: lite only


def test_vistory_runs_get_the_leaderboard_of_their_split_and_other_runs_none_of_it():
    # Asked of published_rows itself: the vistorybench eval preset is another change's.
    def shown(*runs):
        return [(r.benchmark, r.split) for r in published_rows("vistorybench", runs)]

    assert vistory_split("ViStoryBench-lite") == "lite" and vistory_split("out/ViStory") == "full"
    assert set(shown(("vistory", "ViStoryBench"))) == {("ViStoryBench", "full")}
    assert set(shown(("vistory", "ViStoryBench-lite"))) == {("ViStoryBench", "lite")}
    assert len(shown(("vistory", "ViStoryBench"), ("vistory", "ViStoryBench-lite"))) == 55
    assert shown(("consistory-human", "single")) == [] and shown((None, "")) == []
    assert len(shown()) == 55
