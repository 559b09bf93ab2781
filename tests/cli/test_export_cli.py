"""`storycast export`: a run drawn by `storycast generate` as pages, with the format taken from -o's name, errors as
one line with the fix (exit status 2), and no heavy import."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from storycast.cli.main import main
from tests.export.helpers import FRAMES, generate_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return generate_run(tmp_path_factory.mktemp("export-cli"))


def test_export_writes_into_the_run_folder_by_default(run, capsys):
    assert main(["export", str(run), "--layout", "book", "--dpi", "40"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"book: {run / 'exports' / 'book.pdf'}"
    assert (run / "exports" / "book.pdf").read_bytes().startswith(b"%PDF-")


def test_the_format_follows_the_output_name_and_page_options_reach_the_pages(run, tmp_path, capsys):
    out = tmp_path / "story.cbz"
    args = ["export", str(run), "-o", str(out), "--comic-style", "four-panel", "--page", "A5", "--landscape"]
    assert main([*args, "--dpi", "40"]) == 0
    with zipfile.ZipFile(out) as archive:
        pages = [n for n in archive.namelist() if n.endswith(".png")]
        info = archive.read("ComicInfo.xml").decode()
    assert len(pages) == -(-FRAMES // 4)
    # A5 landscape at 40 DPI: 210 x 148 mm -> 331 x 233 pixels.
    assert 'ImageWidth="331" ImageHeight="233"' in info
    assert main(["export", str(run), "--format", "png", "--layout", "grid", "--columns", "1", "--rows", "1",
                 "--dpi", "40", "-o", str(tmp_path / "sheets")]) == 0  # fmt: skip
    assert len(list((tmp_path / "sheets").glob("page_*.png"))) == FRAMES
    assert f"grid: {FRAMES} page(s) -> {tmp_path / 'sheets'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "is not a storycast run folder (it has no manifest.json). Fix: pass the --out folder"),
        (["{run}", "--page", "B7"], "page size 'B7' is neither a known name nor WIDTHxHEIGHT with a unit"),
        (["{run}", "--format", "pdf", "-o", "{tmp}/x.cbz"], "asks for cbz, but the format is pdf"),
        (["{run}", "--dpi", "5000"], "dpi 5000 is out of range"),
    ],
)
def test_errors_are_one_line_with_the_fix(run, tmp_path, capsys, args, message):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in args]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unknown_layouts_and_formats_are_refused_by_the_parser(run, capsys):
    for option in (["--layout", "strip"], ["--format", "epub"]):
        with pytest.raises(SystemExit) as caught:
            main(["export", str(run), *option])
        assert caught.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_export_imports_no_heavy_library(run, tmp_path):
    probe = (
        "import json, sys\n"
        "from storycast.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'})]))"
    )
    args = ["export", str(run), "--format", "html", "-o", str(tmp_path / "x.html")]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []]
