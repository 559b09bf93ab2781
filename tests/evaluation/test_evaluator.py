"""The Evaluator on hand-made run folders with tiny extractors: files, reuse, the feature cache, references, errors."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from storycast.errors import MissingWeightsError, RunFolderError, SettingsError
from storycast.evaluation.evaluator import Evaluator, ExtractorOptions, compare
from storycast.evaluation.presets import resolve_preset
from storycast.vision.faces import FaceAnalyzer
from storycast.vision.features import ClipFeatures
from tests.evaluation import fakes

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # the tiny face models are written with torch.onnx

TINY = ExtractorOptions(tiny=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One storycast cache per module: the tiny face pack is written once."""
    return tmp_path_factory.mktemp("cache")


def make_evaluator(cache_dir, features, preset="identitystory", options=TINY, **kwargs):
    return Evaluator(resolve_preset(preset, tiny=True, **kwargs), options, cache_dir=cache_dir, feature_cache=features)


def single_run(folder):
    images = [
        fakes.frame([(2, 2, 1)], shade=40),
        fakes.frame([(10, 4, 1)], shade=80),
        fakes.frame(shade=100),
        fakes.frame([(6, 12, 1)], shade=120),
    ]
    return fakes.write_run(folder, images)


def test_a_run_gets_scores_a_contact_sheet_and_results(cache_dir, tmp_path):
    run = single_run(tmp_path / "run")
    result = make_evaluator(cache_dir, tmp_path / "features").evaluate(run)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["preset"] == "identitystory" and scores["evaluation"]["tiny"] is True
    assert set(scores["values"]) == {"clip_t", "clip_t_c", "clip_i", "face_sim"}  # Q-Align is left out with tiny
    assert scores["values"]["face_sim"] == pytest.approx(100.0, abs=0.01)  # the same face everywhere
    assert scores["details"]["face_coverage"] == {"expected": 4, "found": 3, "coverage": 0.75}
    assert "face_sim" not in scores["frames"][2] and len(scores["frames"]) == 4
    assert scores["evaluation"]["extractors"]["clip"]["source"] == "tiny:0"
    assert scores["evaluation"]["environment"]["packages"]["transformers"]
    sheet = Image.open(run / "scores.png")
    assert sheet.width > 2 * 256 and sheet.height > 2 * 256
    assert [p.name for p in result.paths.values()] == ["results.json", "results.md", "results.png"]
    assert result.results["groups"][0]["stories"] == 1 and result.scored == [run]
    markdown = (run / "results.md").read_text()
    assert (
        "| vanilla | – | 1 |" in markdown
        and "*IdentityStory* (AAAI'26)" in markdown
        and "Tiny random-weight" in markdown
    )


def test_up_to_date_scores_are_reused_and_a_changed_frame_is_rescored(cache_dir, tmp_path):
    run = single_run(tmp_path / "run")
    evaluator = make_evaluator(cache_dir, tmp_path / "features")
    evaluator.evaluate(run)
    written = (run / "scores.json").stat().st_mtime_ns
    again = evaluator.evaluate(run)
    assert again.reused == [run] and again.scored == []
    assert (run / "scores.json").stat().st_mtime_ns == written
    fakes.frame([(4, 4, 2)], shade=90).save(run / "frames" / "frame_001.png")
    changed = evaluator.evaluate(run)
    assert changed.scored == [run]
    assert json.loads((run / "scores.json").read_text())["values"]["face_sim"] < 99.0


def test_rescoring_with_another_protocol_reuses_the_cached_features(cache_dir, tmp_path, monkeypatch):
    run = single_run(tmp_path / "run")
    make_evaluator(cache_dir, tmp_path / "features", add=["face_sim_r"]).evaluate(run)

    def fail(*args, **kwargs):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(ClipFeatures, "encode_images", fail)
    monkeypatch.setattr(FaceAnalyzer, "analyze_images", fail)
    other = make_evaluator(cache_dir, tmp_path / "features", overrides={"face_missing": "zero"})
    assert other.evaluate(run).scored == [run]
    zero = json.loads((run / "scores.json").read_text())["values"]["face_sim"]
    assert zero == pytest.approx(50.0, abs=0.01)  # 3 of 6 pairs have both faces
    texts = []
    encode_texts = ClipFeatures.encode_texts
    monkeypatch.setattr(ClipFeatures, "encode_texts", lambda self, t: texts.extend(t) or encode_texts(self, t))
    make_evaluator(cache_dir, tmp_path / "features", preset="1prompt1story").evaluate(run)
    assert texts and all(t.startswith("A photo depicts A photo of") for t in texts)  # only the new texts


def test_multi_character_faces_and_identity_previews(tmp_path):
    cache = tmp_path / "cache"
    leo, ana = 11, 12
    images = [fakes.frame([(2, 2, leo), (10, 2, ana)]), fakes.frame([(2, 8, ana), (10, 8, leo)], shade=90)]
    metadata = [{"characters": {"leo": "key-leo", "ana": "key-ana"}}] * 2
    run = fakes.write_run(tmp_path / "run", images, fakes.story_data(2, ("leo", "ana")), metadata=metadata)
    (cache / "identities" / "key-leo").mkdir(parents=True)
    fakes.frame([(1, 1, leo), (9, 9, leo)]).save(cache / "identities" / "key-leo" / "preview.png")
    evaluator = make_evaluator(cache, tmp_path / "features", add=["face_sim_r"])
    evaluator.evaluate(run)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["references"]["leo"]["kind"] == "identity" and scores["references"]["ana"]["kind"] == "none"
    assert scores["values"]["face_sim"] == pytest.approx(100.0, abs=0.01)  # each character matched to itself
    assert scores["values"]["face_sim_r"] == pytest.approx(100.0, abs=0.01)  # leo vs his preview; ana has none
    assert [r["character"] for r in scores["details"]["face_sim"]] == ["leo", "ana"]


def test_reference_photos_win_over_identity_previews(tmp_path):
    photo = tmp_path / "mara.png"
    fakes.frame([(5, 5, 21)]).save(photo)
    story = fakes.story_data(2)
    story["characters"][0]["references"] = [str(photo)]
    run = fakes.write_run(tmp_path / "run", [fakes.frame([(2, 2, 21)]), fakes.frame([(8, 8, 22)])], story)
    make_evaluator(tmp_path / "cache", tmp_path / "features", add=["face_sim_r"]).evaluate(run)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["references"]["mara"]["kind"] == "photos"
    assert scores["frames"][0]["face_sim_r"] == pytest.approx(100.0, abs=0.01)
    assert scores["frames"][1]["face_sim_r"] < 90.0


def test_dino_and_tiny_qalign(cache_dir, tmp_path):
    run = single_run(tmp_path / "run")
    make_evaluator(cache_dir, tmp_path / "features", add=["dino_i", "qalign"], remove=["faces"]).evaluate(run)
    values = json.loads((run / "scores.json").read_text())["values"]
    assert set(values) == {"clip_t", "clip_t_c", "clip_i", "dino_i", "qalign_gen", "qalign_aes"}
    assert (
        1.0 <= values["qalign_gen"] <= 5.0 and 1.0 <= values["qalign_aes"] <= 5.0 and -100 <= values["dino_i"] <= 100
    )


@pytest.mark.parametrize(
    ("options", "preset", "message"),
    [
        (
            {"face_models": "empty"},
            "identitystory",
            r"'scrfd_10g_bnkps\.onnx' of the 'antelopev2' pack.*--face-models",
        ),
        (
            {"clip_model": "no-clip"},
            "identitystory",
            r"CLIP folder '.*no-clip' does not exist\. Fix: pass --clip-model",
        ),
        ({"clip_i_model": "no-clip-i"}, "1prompt1story", r"no-clip-i' does not exist\. Fix: pass --clip-i-model"),
        (
            {"dino_model": "no-dino"},
            "identitystory",
            r"DINO folder '.*no-dino' does not exist\. Fix: pass --dino-model",
        ),
    ],
)
def test_missing_model_files_name_the_file_and_the_flag(cache_dir, tmp_path, options, preset, message):
    run = single_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    options = {k: str(tmp_path / v) for k, v in options.items()}
    evaluator = make_evaluator(
        cache_dir,
        tmp_path / "features",
        preset,
        ExtractorOptions(tiny=True, **options),
        add=["dino_i"] if "dino_model" in options else (),
    )
    with pytest.raises(MissingWeightsError, match=message):
        evaluator.evaluate(run)


def test_unfinished_runs_are_left_out_of_a_folder_and_refused_alone(cache_dir, tmp_path):
    single_run(tmp_path / "tree" / "a")
    fakes.write_run(tmp_path / "tree" / "b", [fakes.frame()] * 2, status="interrupted")
    result = make_evaluator(cache_dir, tmp_path / "features").evaluate(tmp_path / "tree")
    assert result.skipped == [{"run": "b", "reason": "status 'interrupted'"}]
    assert "Left out (not finished): `b`" in (tmp_path / "tree" / "results.md").read_text()
    with pytest.raises(RunFolderError, match=r"not a finished run.*Fix"):
        make_evaluator(cache_dir, tmp_path / "features").evaluate(tmp_path / "tree" / "b")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RunFolderError, match="no run folder"):
        make_evaluator(cache_dir, tmp_path / "features").evaluate(tmp_path / "nothing")


def test_compare_puts_folders_side_by_side_with_the_papers(cache_dir, tmp_path):
    for name, method in (("vanilla", "vanilla"), ("mine", "identitystory")):
        images = [fakes.frame([(2, 2, 1)], shade=40), fakes.frame([(6, 6, 1)], shade=90)]
        fakes.write_run(tmp_path / name / "single" / "story_000", images, method=method)
        make_evaluator(cache_dir, tmp_path / "features").evaluate(tmp_path / name)
    document, written = compare([tmp_path / "vanilla", tmp_path / "mine"], tmp_path / "report")
    assert [(r["run"], r["label"], r["split"]) for r in document["rows"]] == [
        ("vanilla", "vanilla", "single"),
        ("mine", "identitystory", "single"),
    ]
    table = (tmp_path / "report" / "comparison.md").read_text()
    assert "| vanilla [vanilla] | single | 1 |" in table and "*IdentityStory* (AAAI'26) | single (paper)" in table
    assert Image.open(written["chart"]).width > 600
    make_evaluator(cache_dir, tmp_path / "features", preset="1prompt1story").evaluate(tmp_path / "mine")
    with pytest.raises(SettingsError, match="not comparable"):
        compare([tmp_path / "vanilla", tmp_path / "mine"], tmp_path / "report")
    with pytest.raises(RunFolderError, match="storycast evaluate"):
        compare([tmp_path / "features"], tmp_path / "report")


def test_nan_values_are_null_in_json(cache_dir, tmp_path):
    run = fakes.write_run(tmp_path / "run", [fakes.frame(), fakes.frame(shade=90)])
    make_evaluator(cache_dir, tmp_path / "features").evaluate(run)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["values"]["face_sim"] is None
    results = json.loads((run / "results.json").read_text())
    assert results["groups"][0]["metrics"]["face_sim"]["mean"] is None
    assert not math.isnan(results["groups"][0]["metrics"]["clip_t"]["mean"])


def test_splits_get_a_pooled_row_and_each_extractor_loads_once(cache_dir, tmp_path, monkeypatch):
    for split in ("single", "multi-2"):
        single_run(tmp_path / "tree" / split / "story_000")
    loads, batches = [], []
    tiny, encode_images = ClipFeatures.tiny, ClipFeatures.encode_images
    monkeypatch.setattr(ClipFeatures, "tiny", staticmethod(lambda *a, **k: loads.append(1) or tiny(*a, **k)))
    monkeypatch.setattr(
        ClipFeatures, "encode_images", lambda self, im: batches.append(len(im)) or encode_images(self, im)
    )
    result = make_evaluator(cache_dir, tmp_path / "features").evaluate(tmp_path / "tree")
    assert loads == [1]  # one CLIP for both runs, CLIP-T and CLIP-I
    assert batches == [4]  # the 4 frames in one batch; the second run has the same frames: cache hits
    groups = [(g["split"], g["stories"]) for g in result.results["groups"]]
    assert groups == [("multi-2", 1), ("single", 1), ("all", 2)]
    assert [s["run"] for s in result.results["stories"]] == ["multi-2/story_000", "single/story_000"]
    markdown = (tmp_path / "tree" / "results.md").read_text()
    assert "## Stories: vanilla · single" in markdown and "| vanilla | all | 2 |" in markdown


def test_a_face_pack_folder_is_used_and_recorded_by_pack_not_path(cache_dir, tmp_path):
    from storycast.vision.tiny_faces import write_tiny_face_pack

    folder = write_tiny_face_pack(tmp_path / "models" / "antelopev2", "antelopev2")
    run = single_run(tmp_path / "run")
    evaluator = make_evaluator(
        cache_dir, tmp_path / "features", options=ExtractorOptions(tiny=True, face_models=folder)
    )
    evaluator.evaluate(run)
    faces = json.loads((run / "scores.json").read_text())["evaluation"]["extractors"]["faces"]
    assert faces["source"] == "antelopev2" and set(faces["files"]) == {"scrfd_10g_bnkps.onnx", "glintr100.onnx"}
    assert faces["tiny"] is False


def test_a_face_pack_url_is_downloaded_once_into_the_cache(cache_dir, tmp_path):
    import zipfile

    from storycast.evaluation.downloads import fetch_zip
    from storycast.vision.tiny_faces import write_tiny_face_pack

    folder = write_tiny_face_pack(tmp_path / "pack" / "antelopev2", "antelopev2")
    archive = tmp_path / "antelopev2.zip"
    with zipfile.ZipFile(archive, "w") as pack:
        for path in folder.iterdir():
            pack.write(path, f"antelopev2/{path.name}")
    url = archive.as_uri()
    run = single_run(tmp_path / "run")
    evaluator = make_evaluator(cache_dir, tmp_path / "features", options=ExtractorOptions(tiny=True, face_models=url))
    evaluator.evaluate(run)
    faces = json.loads((run / "scores.json").read_text())["evaluation"]["extractors"]["faces"]
    assert faces["source"] == "antelopev2" and faces["tiny"] is False
    unpacked = fetch_zip(url, cache_dir)
    assert (unpacked / "antelopev2" / "glintr100.onnx").is_file()
    archive.unlink()  # the second time nothing is fetched
    assert fetch_zip(url, cache_dir) == unpacked


def test_a_face_pack_url_with_a_checksum_is_verified_before_unpacking(tmp_path):
    import zipfile

    from storycast.errors import ModelLoadError
    from storycast.evaluation.downloads import fetch_zip
    from storycast.utils.io import sha256_file

    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as pack:
        pack.writestr("pack/det_10g.onnx", b"model bytes")
    wrong = archive.as_uri() + "#sha256=" + "0" * 64
    with pytest.raises(ModelLoadError, match=r"not the file its checksum names.*not unpacked"):
        fetch_zip(wrong, tmp_path / "cache")
    right = archive.as_uri() + "#sha256=" + sha256_file(archive)
    assert (fetch_zip(right, tmp_path / "cache") / "pack" / "det_10g.onnx").read_bytes() == b"model bytes"


def test_a_face_pack_url_that_cannot_be_fetched_names_the_flag(tmp_path):
    from storycast.errors import MissingWeightsError
    from storycast.evaluation.downloads import fetch_zip

    cache = tmp_path / "cache"
    with pytest.raises(MissingWeightsError, match="--face-models"):
        fetch_zip((tmp_path / "missing.zip").as_uri(), cache)
    assert not list((cache / "downloads").iterdir())  # nothing half-downloaded is left behind


def _damage(run, kind):
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    frame = run / manifest["frames"][1]["file"]
    if kind == "truncated frame":
        frame.write_bytes(frame.read_bytes()[:60])
    elif kind == "empty frame":
        frame.write_bytes(b"")
    elif kind == "random bytes":
        frame.write_bytes(bytes(range(256)) * 4)
    elif kind == "frames is a string":
        manifest["frames"] = "frames/frame_000.png"
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "path outside the run":
        manifest["frames"][1]["file"] = "../../outside.png"
        (run.parent.parent / "outside.png").write_bytes(frame.read_bytes())
        manifest_path.write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize(
    "kind", ["truncated frame", "empty frame", "random bytes", "frames is a string", "path outside the run"]
)
def test_a_damaged_run_in_a_tree_is_skipped_and_the_others_are_scored(cache_dir, tmp_path, kind):
    tree = tmp_path / "tree"
    good = single_run(tree / "split" / "good")
    bad = single_run(tree / "split" / "bad")
    _damage(bad, kind)
    result = make_evaluator(cache_dir, tmp_path / "features").evaluate(tree)
    assert result.scored == [good]
    assert [s["run"] for s in result.skipped] == ["split/bad"]
    with pytest.raises(RunFolderError, match="Fix"):
        make_evaluator(cache_dir, tmp_path / "features").score_run(bad)


@pytest.mark.parametrize("content", ["", "{}", '{"eval_key": "x"}', "[1, 2]", "not json"])
def test_an_emptied_or_mangled_scores_file_is_not_reused(cache_dir, tmp_path, content):
    run = single_run(tmp_path / "run")
    evaluator = make_evaluator(cache_dir, tmp_path / "features")
    evaluator.score_run(run)
    scores = json.loads((run / "scores.json").read_text())
    (run / "scores.json").write_text(content)
    assert not evaluator.is_scored(run)
    again = evaluator.score_run(run)
    assert not again.reused and json.loads((run / "scores.json").read_text())["values"] == scores["values"]
    mangled = {**scores, "values": "nonsense", "frames": 3}
    (run / "scores.json").write_text(json.dumps(mangled))
    assert not evaluator.score_run(run).reused  # right keys, broken fields: scored again


def test_a_fallback_from_the_authors_masks_is_noted_under_the_results(cache_dir, tmp_path):
    tree = tmp_path / "tree"
    fell_back = single_run(tree / "split" / "a")
    single_run(tree / "split" / "b")
    manifest = json.loads((fell_back / "manifest.json").read_text())
    manifest["frames"][0]["metadata"] = {"mask_provider": "attention", "mask_fallback": True}
    (fell_back / "manifest.json").write_text(json.dumps(manifest))
    result = make_evaluator(cache_dir, tmp_path / "features").evaluate(tree)
    assert result.results["drawn_with"]["mask_fallback_runs"] == 1
    assert "Masks: 1 of 2 run(s) used the class words' attention maps" in (tree / "results.md").read_text()
