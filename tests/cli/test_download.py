"""``storycast download``: the ConsiStory-Human files, each checked against its SHA-256 before it is written,
resumable, and found by ``storycast benchmark``; model names and offline failures (fetching weights needs the
network, so only the errors are tested)."""

from __future__ import annotations

import fnmatch
import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from storycast.cli.download import HubItem, model_downloads, model_files
from storycast.cli.main import main
from storycast.errors import SettingsError
from storycast.evaluation import bench_data
from storycast.evaluation import benchmark as B
from storycast.utils.io import sha256_file
from tests.helpers import BENCH

needs_shared = pytest.mark.skipif(not BENCH.is_dir(), reason=f"needs the shared ConsiStory-Human copy at {BENCH}")
MODEL_NAMES = (
    "sdxl",
    "sd15",
    "flux-dev",
    "flux-schnell",
    "photomaker",
    "photomaker-v2",
    "grounding-dino",
    "sam",
    "clip",
    "dino",
    "ip-adapter-plus-face",
    "clip-vit-h",
    "ip-adapter-sdxl",
    "pulid-flux",
    "vistorybench-metrics",
    "realvisxl",
)


def _story(number: int, characters: int) -> dict:
    people = [f"young person number {number}-{i} with short hair" for i in range(characters)]
    settings = ["reading in a library", "walking on a beach"]
    return {
        "prompts": [f"A close-up photo of {', '.join(people)}, {s}" for s in settings],
        "token": "person" if characters == 1 else ["person"] * characters,
        "character": people[0] if characters == 1 else people,
        "settings_types": ["action", "background"],
        "settings": settings,
        "style": "A close-up photo of",
    }


@pytest.fixture
def copy(tmp_path):
    """A small benchmark folder in our layout, and its own checksum table."""
    root = tmp_path / "copy"
    for path, characters in (
        ("single/story_000.json", 1),
        ("single/story_001.json", 1),
        ("multi-2/story_000.json", 2),
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(_story(int(path[-8:-5]), characters), indent=4), encoding="utf-8")
    return root, bench_data.checksum_table(root)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """storycast's cache in tmp_path, and no $STORYCAST_BENCH."""
    monkeypatch.setenv("STORYCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(B.BENCH_ENV, raising=False)
    return tmp_path / "cache"


def test_the_stored_table_is_the_pinned_benchmark():
    counts = {split: sum(p.startswith(f"{split}/") for p in bench_data.CHECKSUMS) for split in bench_data.SPLITS}
    assert counts == {"single": 80, "multi-2": 10, "multi-3": 10}
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in bench_data.CHECKSUMS.values())
    assert bench_data.raw_url("multi-3/story_009.json") == (
        "https://raw.githubusercontent.com/Correr-Zhou/IdentityStory/882cfd7c5cc4882ecc00238cdaa5ab7293eae7f5/"
        "bench/ConsiStory-Human-multi-3/story_009.json"
    )


def test_a_local_copy_is_checked_copied_then_kept(copy, tmp_path):
    root, table = copy
    target = tmp_path / "target"
    first = bench_data.install(target, source=root, checksums=table)
    assert sorted(first.written) == sorted(table) and first.kept == []
    for path in table:
        assert (target / path).read_bytes() == (root / path).read_bytes()
    again = bench_data.install(target, source=root, checksums=table)
    assert again.written == [] and sorted(again.kept) == sorted(table)
    # The authors' layout (bench/ConsiStory-Human-<split>/) is read as well, into ours.
    theirs = tmp_path / "IdentityStory"
    for path in table:
        split, _, name = path.partition("/")
        (theirs / "bench" / f"ConsiStory-Human-{split}").mkdir(parents=True, exist_ok=True)
        (theirs / "bench" / f"ConsiStory-Human-{split}" / name).write_bytes((root / path).read_bytes())
    for source in (theirs, theirs / "bench"):
        result = bench_data.install(tmp_path / source.name / "out", source=source, checksums=table, splits=["multi-2"])
        assert result.written == ["multi-2/story_000.json"]


def test_a_damaged_file_is_refused_by_name(copy, tmp_path, monkeypatch, capsys):
    root, table = copy
    (root / "single" / "story_001.json").write_text("{}", encoding="utf-8")
    target = tmp_path / "target"
    with pytest.raises(bench_data.BenchDataError, match=r"do not match their SHA-256.*single/story_001\.json"):
        bench_data.install(target, source=root, checksums=table)
    assert not (target / "single" / "story_001.json").exists()  # refused; the good files are kept
    assert (target / "single" / "story_000.json").is_file() and (target / "multi-2" / "story_000.json").is_file()

    monkeypatch.setattr(bench_data, "CHECKSUMS", table)
    assert main(["download", "consistory-human", "--from", str(root), "--to", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "single/story_001.json" in err and "Fix:" in err and "Traceback" not in err


def test_a_to_that_is_a_file_is_refused_before_anything_is_read(copy, tmp_path, monkeypatch, capsys):
    root, table = copy
    monkeypatch.setattr(bench_data, "CHECKSUMS", table)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for to in (mine, mine / "bench"):
        assert main(["download", "consistory-human", "--from", str(root), "--to", str(to)]) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "Fix:" in err and "Traceback" not in err
    assert mine.read_text() == "mine"


def test_a_link_inside_the_target_is_never_written_through(copy, tmp_path, monkeypatch, capsys):
    root, table = copy
    monkeypatch.setattr(bench_data, "CHECKSUMS", table)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "single").symlink_to(outside, target_is_directory=True)
    assert main(["download", "consistory-human", "--from", str(root), "--to", str(target)]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(target / "single") in err and "Traceback" not in err
    assert list(outside.iterdir()) == []
    # A link naming the whole folder is the user's choice, and is followed.
    linked = tmp_path / "linked"
    linked.symlink_to(outside, target_is_directory=True)
    assert sorted(bench_data.install(linked, source=root, checksums=table).written) == sorted(table)


def test_a_huge_file_in_from_is_hashed_in_chunks_and_never_read_whole(copy, tmp_path, monkeypatch):
    root, table = copy
    huge = root / "single" / "story_001.json"
    with open(huge, "wb") as handle:  # sparse: 3 GiB on paper, nothing on disk
        handle.truncate(3 * 2**30)
    real_read_bytes = Path.read_bytes

    def read_bytes(path):
        assert path.stat().st_size < 2**20, f"{path} read whole"
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(bench_data, "sha256_file", lambda path: "0" * 64 if path == huge else sha256_file(path))
    with pytest.raises(bench_data.BenchDataError, match=r"single/story_001\.json"):
        bench_data.install(tmp_path / "target", source=root, checksums=table)


def test_an_interrupted_copy_resumes(copy, tmp_path):
    root, table = copy
    target = tmp_path / "target"

    def stop_after_first(event):
        if event.completed == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_data.install(target, source=root, checksums=table, progress=stop_after_first)
    assert [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()] == ["single/story_000.json"]
    (target / "multi-2").mkdir()
    (target / "multi-2" / "story_000.json").write_text("{", encoding="utf-8")  # cut short by something else
    events = []
    result = bench_data.install(target, source=root, checksums=table, progress=events.append)
    assert result.kept == ["single/story_000.json"]
    assert sorted(result.written) == ["multi-2/story_000.json", "single/story_001.json"]
    assert bench_data.checksum_table(target) == table
    assert [e.completed for e in events] == [0, 1, 2, 3] and {e.total for e in events} == {3}


def test_downloads_come_from_the_pinned_commit_and_offline_is_one_clean_message(copy, tmp_path, monkeypatch, capsys):
    root, table = copy
    served = {bench_data.raw_url(path): (root / path).read_bytes() for path in table}
    asked = []

    def fetch(url):
        asked.append(url)
        return served[url]

    result = bench_data.install(tmp_path / "target", checksums=table, fetch=fetch)
    assert sorted(result.written) == sorted(table) and sorted(asked) == sorted(served)
    assert all(bench_data.COMMIT in url for url in asked)

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["download", "consistory-human", "--split", "multi-3", "--to", str(tmp_path / "net")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: could not download")
    assert bench_data.raw_url("multi-3/story_000.json") in err and "--from" in err


def test_the_cache_copy_is_found_by_storycast_benchmark_only_when_complete(copy, cache, monkeypatch, caplog, capsys):
    root, table = copy
    monkeypatch.setattr(bench_data, "CHECKSUMS", table)
    assert main(["download", "consistory-human", "--from", str(root)]) == 0
    target = cache / "bench" / "ConsiStory-Human"
    assert str(target) in capsys.readouterr().out
    assert B.resolve_suite("multi-2").folder == target / "multi-2"
    (target / "single" / "story_001.json").unlink()  # as an interrupted download leaves it
    monkeypatch.setattr(logging.getLogger("storycast"), "propagate", True)  # main() gave it a terminal handler
    with caplog.at_level("WARNING"):
        try:
            found = B.resolve_suite("single").folder  # ../shared's, where there is one
        except SettingsError as err:
            found = None
            assert "storycast download consistory-human" in str(err)
    assert found != target / "single"
    assert "holds 1 of the 2 files of split 'single'; skipped" in caplog.text
    # --limit 1 asks only for story_000, which is there: the part-downloaded split serves it.
    assert B.resolve_suite("single", limit=1).folder == target / "single"


def test_a_split_found_nowhere_names_the_download(cache, tmp_path, monkeypatch, capsys):
    if any((root / "multi-3").is_dir() for root in B.bench_roots()):
        pytest.skip("a multi-3 split is on this machine")
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "multi-3", "--method", "vanilla", "--preset", "tiny", "--out", str(tmp_path / "o")]) == 2
    assert "Fix: fetch the benchmark with `storycast download consistory-human`" in capsys.readouterr().err


@needs_shared
def test_the_shared_copy_matches_the_stored_checksums_and_benchmark_finds_it(cache, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")  # the tiny face metric
    pytest.importorskip("onnx")
    absent = [path for path in bench_data.CHECKSUMS if not (BENCH / path).is_file()]
    to = tmp_path / "data"
    code = main(["download", "consistory-human", "--from", str(BENCH), "--to", str(to)])
    err = capsys.readouterr().err
    if absent:  # the shared copy has single 000-069 and multi-2 only: each file it has is checked, the others named
        assert code == 2 and f"{len(absent)} file(s) are not in" in err and "do not match" not in err
        assert ("multi-3/ (all 10)" in err) == all(
            p in absent for p in bench_data.CHECKSUMS if p.startswith("multi-3")
        )
    else:
        assert code == 0, err
    assert len(bench_data.checksum_table(to)) == len(bench_data.CHECKSUMS) - len(absent)
    assert main(["download", "consistory-human", "--from", str(BENCH), "--to", str(to), "--split", "multi-2"]) == 0
    assert "0 written" in capsys.readouterr().out  # already there, checked again
    assert len(B.resolve_suite("single", bench_root=to).files) == 80 - sum(p.startswith("single/") for p in absent)

    assert main(["download", "consistory-human", "--from", str(BENCH), "--split", "multi-2"]) == 0  # into the cache
    out = tmp_path / "runs"
    run = [
        "--method",
        "vanilla",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--limit",
        "1",
        "--width",
        "64",
        "--height",
        "64",
    ]
    assert main(["benchmark", "multi-2", *run, "--out", str(out)]) == 0
    suites = json.loads((out / "benchmark.json").read_text())["suites"]
    assert suites == [
        {"name": "multi-2", "folder": str(cache / "bench" / "ConsiStory-Human" / "multi-2"), "stories": 1}
    ]


def test_list_names_the_benchmark_and_every_model(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("consistory-human", *MODEL_NAMES):
        assert f"  {name} " in out
    assert set(model_downloads()) == set(MODEL_NAMES)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in out and "TencentARC/PhotoMaker:photomaker-v1.bin" in out


@pytest.mark.parametrize(("typed", "meant"), [("sdx1", "sdxl"), ("consistory", "consistory-human"), ("sam2", "sam")])
def test_an_unknown_name_gets_did_you_mean(typed, meant, capsys):
    assert main(["download", typed]) == 2
    assert f"did you mean '{meant}'?" in capsys.readouterr().err


def test_flags_of_the_benchmark_need_its_name(tmp_path, capsys):
    assert main(["download", "sam", "--to", str(tmp_path)]) == 2
    assert "--to apply to consistory-human and vistorybench only" in capsys.readouterr().err
    assert main(["download"]) == 2
    assert "storycast download --list" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["photomaker", "sam"])
def test_a_model_download_offline_is_one_clean_message(name, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    assert main(["download", name]) == 2
    err = capsys.readouterr().err.strip()
    repo = {"photomaker": "TencentARC/PhotoMaker:photomaker-v1.bin", "sam": "facebook/sam-vit-huge"}[name]
    assert err.count("\n") == 0 and err.startswith(f"error: could not download '{repo}'")
    assert "cannot reach the Hub" in err and "HF_HOME" in err


def test_model_files_takes_one_weight_format_from_one_folder():
    files = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "preprocessor_config.json",
        "README.md",
        "models/image_encoder/config.json",
        "models/image_encoder/pytorch_model.bin",
    ]
    assert model_files(files) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert model_files(files, "models/image_encoder") == [
        "models/image_encoder/config.json",
        "models/image_encoder/pytorch_model.bin",
    ]
    assert HubItem("model", "h94/IP-Adapter", "models/image_encoder").label == "h94/IP-Adapter:models/image_encoder"


def test_the_pulid_and_vistorybench_downloads_are_the_files_their_loaders_read():
    """What `storycast download pulid-flux vistorybench-metrics` puts in the cache is what the loaders ask for."""
    from storycast.evaluation.presets import EVAL_PRESETS
    from storycast.identity.eva_clip import EVA_CLIP_FILE, EVA_CLIP_REPO
    from storycast.identity.pulid_flux import PULID_REPO
    from storycast.methods.pulid.settings import PuLIDMethodSettings

    entries = model_downloads()
    pulid = PuLIDMethodSettings().pulid
    assert entries["pulid-flux"].items == (
        HubItem("file", PULID_REPO, pulid.file),
        HubItem("file", EVA_CLIP_REPO, EVA_CLIP_FILE),
    )
    preset = EVAL_PRESETS["vistorybench"]
    labels = {item.label.replace(":", "/") for item in entries["vistorybench-metrics"].items}
    assert {preset.adaface_model, preset.facenet_model, preset.csd_model, preset.aesthetic_model} <= labels
    assert {preset.detector_model, preset.siglip_model} <= labels


def test_download_list_imports_no_heavy_library():
    probe = (
        "import sys\nfrom storycast.cli.main import main\nmain(['download', '--list'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


FLUX_FILES = {
    "black-forest-labs/FLUX.1-dev": ("flux1-dev.safetensors", "dev_grid.jpg"),
    "black-forest-labs/FLUX.1-schnell": ("flux1-schnell.safetensors", "schnell_grid.jpeg"),
}
FLUX_FOLDERS = (
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model-00001-of-00002.safetensors",
    "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "tokenizer_2/special_tokens_map.json", "tokenizer_2/spiece.model",
    "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json", "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)  # fmt: skip
"""FLUX.1's repositories: diffusers' folders, and at the top Black Forest Labs' single files (the 23.8 GB
transformer, the VAE) that a diffusers pipeline does not read."""
FLUX_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _hub_error(cls, status: int, message: str):
    import httpx2

    url = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/model_index.json"
    return cls(message, response=httpx2.Response(status, request=httpx2.Request("GET", url)))


@pytest.fixture
def flux_hub(tmp_path, monkeypatch):
    """The Hub as diffusers' ``DiffusionPipeline.download`` sees it (its listing, file and snapshot calls), faked
    offline for FLUX.1's two repositories; ``refuse`` makes a call fail as the Hub does, ``fetched`` lists the files
    each snapshot would bring."""
    import diffusers.pipelines.pipeline_utils as pipeline_utils
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub = SimpleNamespace(fetched={}, refuse={})

    def check(call, repo_id, local_files_only=False):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} is not in the local cache")
        if call in hub.refuse:
            raise hub.refuse[call]

    def model_info(repo_id, **kwargs):
        check("model_info", repo_id)
        files = (*FLUX_FOLDERS, *FLUX_FILES[repo_id], "README.md", "LICENSE.md", ".gitattributes")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files])

    def hf_hub_download(repo_id, filename, local_files_only=False, **kwargs):
        check("hf_hub_download", repo_id, local_files_only)
        path = tmp_path / "hub" / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(FLUX_INDEX))
        return str(path)

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, local_files_only=False, **kwargs):
        check("snapshot_download", repo_id, local_files_only)
        files = model_info(repo_id).siblings
        hub.fetched[repo_id] = sorted(
            f.rfilename
            for f in files
            if any(fnmatch.fnmatch(f.rfilename, p) for p in allow_patterns or ["*"])
            and not any(fnmatch.fnmatch(f.rfilename, p) for p in ignore_patterns or [])
        )
        return str(tmp_path / "hub" / repo_id)

    monkeypatch.setattr(pipeline_utils, "_resolve_revision", lambda repo_id, revision=None, **kwargs: revision)
    monkeypatch.setattr(pipeline_utils, "get_cached_repo_tree", lambda *args, **kwargs: [])
    for fake in (model_info, hf_hub_download, snapshot_download):
        monkeypatch.setattr(pipeline_utils, fake.__name__, fake)
    return hub


def test_flux_downloads_bring_the_diffusers_folders_not_the_single_files(flux_hub, capsys):
    assert main(["download", "flux-dev", "flux-schnell"]) == 0
    out = capsys.readouterr().out
    assert (
        "flux-dev: black-forest-labs/FLUX.1-dev -> " in out and "flux-schnell: black-forest-labs/FLUX.1-schnell" in out
    )
    for repo_id, single_files in FLUX_FILES.items():
        assert flux_hub.fetched[repo_id] == sorted(FLUX_FOLDERS), single_files
    entries = model_downloads()
    assert entries["flux-dev"].items == (HubItem("pipeline", "black-forest-labs/FLUX.1-dev"),)
    assert main(["download", "flux-schnell", "--variant", "fp16"]) == 2  # FLUX ships no fp16 files
    assert "--variant applies to sdxl and sd15 only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("call", "error", "status"),
    [
        # Not logged in: the listing is public, the files are not (401); logged in without the licence: 403.
        ("hf_hub_download", "GatedRepoError", 401),
        ("hf_hub_download", "GatedRepoError", 403),
        # The listing refused: diffusers falls back to the cache, finds nothing, and raises its own error from it.
        ("model_info", "HfHubHTTPError", 401),
    ],
)
def test_a_refused_flux_dev_download_says_to_accept_the_licence_and_log_in(flux_hub, call, error, status, capsys):
    from huggingface_hub import errors

    message = f"{status} Client Error. Cannot access gated repo for url https://huggingface.co/..."
    flux_hub.refuse[call] = _hub_error(getattr(errors, error), status, message)
    capsys.readouterr()  # what importing diffusers printed
    assert main(["download", "flux-dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        "error: the Hugging Face Hub refused to give 'black-forest-labs/FLUX.1-dev'"
    )
    assert "accept its licence on https://huggingface.co/black-forest-labs/FLUX.1-dev" in err
    assert "`hf auth login`" in err and "HF_TOKEN" in err
    assert not flux_hub.fetched


def test_an_unreachable_hub_is_not_called_a_refusal(flux_hub, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    flux_hub.refuse["hf_hub_download"] = LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")
    capsys.readouterr()
    assert main(["download", "flux-schnell"]) == 2
    err = capsys.readouterr().err
    assert "could not download 'black-forest-labs/FLUX.1-schnell'" in err and "hf auth login" not in err
