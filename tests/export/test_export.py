"""`export_run` on a tiny run drawn by `storycast generate`: each layout in each format has the pages and panels
it should, every frame appears where its page puts it, PDFs read back through pdftoppm, and bad inputs are refused
with their fix."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import math
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from storycast.errors import ExportError, StorycastError
from storycast.export import ExportSettings, export_run
from storycast.export.api import plan_export
from storycast.export.source import read_run
from tests.export.helpers import FRAMES, STORY, frames_on, generate_run, paint_frames

SETTINGS = {
    # Small pages keep the test fast: A4 at 50 DPI is 413 x 585 pixels.
    "classic": ExportSettings(dpi=50),
    "four-panel": ExportSettings(dpi=50, comic_style="four-panel"),
    "grid": ExportSettings(dpi=50, columns=2, rows=2),
    "book": ExportSettings(dpi=50),
}
LAYOUT = {"classic": "comic", "four-panel": "comic", "grid": "grid", "book": "book"}
EXPECTED_FRAMES = {
    # The 7-frame story on A4: one classic comic page (a row of 4 and a row of 3, see test_layouts); four panels or
    # 2 x 2 storyboard cells a page; a book's title page, then a frame a page.
    "classic": [set(range(7))],
    "four-panel": [{0, 1, 2, 3}, {4, 5, 6}],
    "grid": [{0, 1, 2, 3}, {4, 5, 6}],
    "book": [set(), *({i} for i in range(7))],
}
A4_AT_50_DPI = (413, 585)  # 210 x 297 mm
needs_pdftoppm = pytest.mark.skipif(
    shutil.which("pdftoppm") is None,
    reason="pdftoppm is not installed (Debian/Ubuntu: apt-get install poppler-utils; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The story drawn with the tiny model, as `storycast generate` leaves it."""
    return generate_run(tmp_path_factory.mktemp("drawn"))


@pytest.fixture(scope="module")
def painted(drawn, tmp_path_factory):
    """A copy of the run whose frames are solid colours (tests must not change it: copy it to change it)."""
    run = tmp_path_factory.mktemp("painted") / "run"
    shutil.copytree(drawn, run)
    paint_frames(run)
    return run


@pytest.fixture
def run(painted, tmp_path):
    """A copy of the painted run that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(painted, copy)
    return copy


def pdf_pages(path: Path, dpi: int, tmp_path: Path) -> list[Image.Image]:
    prefix = tmp_path / "pdftoppm" / "page"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(path), str(prefix)], check=True, timeout=900)
    return [Image.open(p).convert("RGB") for p in sorted(prefix.parent.glob("page*.png"))]


def cbz_pages(path: Path) -> tuple[list[str], list[Image.Image], str]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        pages = [n for n in names if n.endswith(".png")]
        images = [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in pages]
        return names, images, archive.read("ComicInfo.xml").decode("utf-8")


def check_frames_on_pages(images, style):
    expected = EXPECTED_FRAMES[style]
    assert len(images) == len(expected)
    assert [set(frames_on(image)) for image in images] == expected
    assert all(
        abs(image.width - A4_AT_50_DPI[0]) <= 1 and abs(image.height - A4_AT_50_DPI[1]) <= 1 for image in images
    )


@pytest.mark.parametrize("style", SETTINGS)
def test_png_pages_hold_each_frame_where_its_page_puts_it(painted, tmp_path, style):
    written = export_run(painted, "png", LAYOUT[style], tmp_path / "pages", SETTINGS[style])
    assert [p.name for p in written] == [f"page_{n:03d}.png" for n in range(1, len(written) + 1)]
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == [p.name for p in written]
    images = [Image.open(p).convert("RGB") for p in written]
    check_frames_on_pages(images, style)
    assert Image.open(written[0]).info["dpi"] == pytest.approx((50, 50), abs=0.05)  # PNG keeps pixels a metre
    if style == "grid":
        return
    # Comic and book panels: the frame's colour fills its panel's box, less the panel's border.
    pages = plan_export(read_run(painted), LAYOUT[style], SETTINGS[style])
    border = SETTINGS[style].points(1.5) + 2
    for image, page in zip(images, pages, strict=True):
        found = frames_on(image)
        for panel in page.panels:
            box = panel.box
            left, top, right, bottom = found[panel.frame]
            assert abs(left - box.left) <= border and abs(top - box.top) <= border, (panel, found[panel.frame])
            assert abs(right - box.right) <= border and abs(bottom - box.bottom) <= border, (panel, found[panel.frame])


@needs_pdftoppm
@pytest.mark.parametrize("style", SETTINGS)
def test_pdf_reads_back_through_pdftoppm_with_every_frame_on_its_page(painted, tmp_path, style):
    (pdf,) = export_run(painted, "pdf", LAYOUT[style], tmp_path / "out.pdf", SETTINGS[style])
    assert pdf.read_bytes().startswith(b"%PDF-")
    check_frames_on_pages(pdf_pages(pdf, 50, tmp_path), style)


@needs_pdftoppm
def test_pdf_pages_have_the_page_size_whatever_the_dpi(painted, tmp_path):
    for dpi in (40, 90):
        (pdf,) = export_run(
            painted, "pdf", "book", tmp_path / f"book{dpi}.pdf", ExportSettings(dpi=dpi, page="Letter")
        )
        # Rendered at 72 DPI a page is its size in points: Letter is 612 x 792.
        pages = pdf_pages(pdf, 72, tmp_path / str(dpi))
        assert len(pages) == FRAMES + 1
        assert all(abs(p.width - 612) <= 1 and abs(p.height - 792) <= 1 for p in pages)


@pytest.mark.parametrize("style", SETTINGS)
def test_cbz_is_a_zip_of_ordered_pages_with_comic_info(painted, tmp_path, style):
    (cbz,) = export_run(painted, "cbz", LAYOUT[style], tmp_path / "out.cbz", SETTINGS[style])
    names, images, info = cbz_pages(cbz)
    pages = [n for n in names if n.endswith(".png")]
    assert pages == [f"page_{n:03d}.png" for n in range(1, len(pages) + 1)] and names[-1] == "ComicInfo.xml"
    check_frames_on_pages(images, style)
    assert f"<PageCount>{len(pages)}</PageCount>" in info and f"<Title>{STORY['title']}</Title>" in info
    assert info.count("<Page ") == len(pages)
    assert ('Type="FrontCover"' in info) == (style == "book")


class _Figures(html.parser.HTMLParser):
    """The pages of an exported HTML file: per page, the frames it shows and their image data; and its text."""

    def __init__(self):
        super().__init__()
        self.pages: list[list[int]] = []
        self.images: dict[int, bytes] = {}
        self.text: list[str] = []
        self._frame: int | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "page" in attrs.get("class", "").split():
            self.pages.append([])
        if "data-frame" in attrs:
            self._frame = int(attrs["data-frame"])
            self.pages[-1].append(self._frame)
        if tag == "img" and self._frame is not None:
            header, data = attrs["src"].split(",", 1)
            assert header == "data:image/png;base64"
            self.images[self._frame] = base64.b64decode(data)

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.parametrize("style", SETTINGS)
def test_html_is_one_file_with_every_frame_inlined_and_the_captions_as_text(painted, tmp_path, style):
    (page,) = export_run(painted, "html", LAYOUT[style], tmp_path / "out.html", SETTINGS[style])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html"]
    document = page.read_text(encoding="utf-8")
    figures = _Figures()
    figures.feed(document)
    assert [set(frames) for frames in figures.pages] == EXPECTED_FRAMES[style]
    run = read_run(painted)
    assert {i: data for i, data in figures.images.items()} == {i: p.read_bytes() for i, p in enumerate(run.frames)}
    text = " ".join(" ".join(figures.text).split())
    if style in ("classic", "four-panel"):
        for words in ("Mia climbs into the attic.", "Is anyone up here?", "A map!", "Careful, it is older than me."):
            assert words in text
        assert "Mia:" not in text.split("attic.")[1]  # the speaker's name before a quote is not lettered
        assert "@font-face" in document and "Comic Neue" in document
    else:
        for index, caption in enumerate(run.captions):
            assert (f"{index + 1}. {caption}" if style == "grid" else caption) in text  # the sheets number frames
    assert "The end &amp; a new beginning &lt;3" in document  # captions are escaped, not markup
    assert "<script" not in document and "http" not in document.split("<body>")[1]


def test_default_outputs_go_into_the_run_folder(run):
    assert export_run(run, "pdf", "book", settings=ExportSettings(dpi=40)) == [run / "exports" / "book.pdf"]
    assert export_run(run, "html", "grid") == [run / "exports" / "grid.html"]
    written = export_run(run, "png", "comic", settings=ExportSettings(dpi=40))
    assert written == [run / "exports" / "comic-png" / "page_001.png"]
    assert not list(run.rglob(".*.part"))


def test_a_png_export_replaces_its_own_pages_only(run, tmp_path):
    folder = tmp_path / "pages"
    assert len(export_run(run, "png", "book", folder, ExportSettings(dpi=40))) == FRAMES + 1
    assert len(export_run(run, "png", "comic", folder, ExportSettings(dpi=40))) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["page_001.png"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds files that are not exported pages \(notes.txt\).*Fix: name a new"):
        export_run(run, "png", "book", folder, ExportSettings(dpi=40))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "page_001.png"]


def test_a_failed_export_leaves_the_previous_one_in_place(run):
    (pdf,) = export_run(run, "pdf", "comic", settings=ExportSettings(dpi=40))
    before = pdf.read_bytes()
    (run / "frames" / "frame_005.png").write_bytes(b"not a png")
    with pytest.raises(ExportError, match=r"frame '.*frame_005.png' cannot be read as an image.*storycast generate"):
        export_run(run, "pdf", "comic", settings=ExportSettings(dpi=40))
    assert pdf.read_bytes() == before
    assert not list(run.rglob(".*.part"))


def test_a_missing_frame_is_named_with_the_command_that_draws_it(run):
    (run / "frames" / "frame_003.png").unlink()
    with pytest.raises(ExportError) as caught:
        export_run(run, "pdf", "book")
    message = str(caught.value)
    assert "missing 1 of its 7 frames: 3 (frames/frame_003.png)" in message
    assert f"`storycast generate STORY --out {run}`" in message and "draws only what is missing" in message
    # The command the manifest records (here the test runner's, drawn in-process) is offered when it drew the run.
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["command"] = "storycast generate story.yaml --preset tiny --out runs/x"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ExportError, match=r"Fix: run `storycast generate story.yaml --preset tiny --out runs/x` again"
    ):
        export_run(run, "pdf", "book")


def test_a_run_stopped_before_a_frame_was_drawn_is_refused(run):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["frames"][6] = None
    manifest["status"] = "interrupted"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"missing 1 of its 7 frames: 6 \(not drawn\)"):
        export_run(run, "html", "comic")


def test_a_run_exports_after_its_story_files_moved(run):
    # The run's story copy names reference photos and masks by absolute path; an export needs neither.
    story = yaml.safe_load((run / "story.yaml").read_text())
    story["characters"][0]["references"] = ["/nowhere/mia.png"]
    story["frames"][0]["masks"] = {"mia": "/nowhere/mask.png"}
    (run / "story.yaml").write_text(yaml.safe_dump(story))
    assert export_run(run, "html", "book")[0].is_file()


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda run: shutil.rmtree(run) or run.mkdir(), r"is not a storycast run folder \(it has no manifest.json\)"),
        (lambda run: (run / "manifest.json").write_text('{"x": 1}'), r"is not a storycast run manifest"),
        (lambda run: (run / "manifest.json").write_text("{"), r"cannot be read as JSON"),
        (
            lambda run: (run / "story.yaml").unlink(),
            r"has no story.yaml .*rerun `storycast generate` with the same --out",
        ),
    ],
    ids=["empty-folder", "foreign-manifest", "broken-manifest", "no-story"],
)
def test_a_folder_that_is_not_a_whole_run_is_refused(run, prepare, message):
    prepare(run)
    with pytest.raises(ExportError, match=message):
        export_run(run, "pdf", "comic")


def test_bad_requests_and_outputs_are_refused_with_the_fix(run, tmp_path):
    cases = [
        ({"format": "epub"}, r"unknown export format 'epub'. Fix: use one of pdf, cbz, html, png"),
        ({"layout": "manga"}, r"unknown layout 'manga'. Fix: use one of grid, comic, book"),
        ({"out": tmp_path / "no" / "such" / "x.pdf"}, r"\(.*no/such\) does not exist. Fix: create it first"),
        ({"out": tmp_path / "x.cbz"}, r"'.*x.cbz' asks for cbz, but the format is pdf. Fix: name it 'x.pdf'"),
        ({"out": tmp_path / "x"}, r"does not end in .pdf, but the format is pdf"),
        ({"out": tmp_path / "pages.png", "format": "png"}, r"png writes a folder of pages.*-o .*pages-pages"),
        ({"out": run, "format": "png"}, r"holds files that are not exported pages \(frames, manifest.json"),
    ]
    (tmp_path / "folder.pdf").mkdir()
    cases.append(({"out": tmp_path / "folder.pdf"}, r"output '.*folder.pdf' is a folder. Fix: name a file"))
    (tmp_path / "file").write_text("x")
    cases.append(({"out": tmp_path / "file", "format": "png"}, r"is a file, but png writes a folder of pages"))
    cases.append(({"out": tmp_path / "file" / "x.pdf"}, r"\(.*file\) is not a folder"))
    for changes, message in cases:
        request = {"format": "pdf", "layout": "comic", "out": None, **changes}
        with pytest.raises(ExportError, match=message):
            export_run(run, request["format"], request["layout"], request["out"])
    with pytest.raises(ExportError, match="is not a folder"):
        export_run(tmp_path / "nowhere", "pdf", "comic")
    assert not (run / "exports").exists()
    assert issubclass(ExportError, StorycastError)


def test_every_frame_of_the_real_run_is_on_some_page(drawn, tmp_path):
    # The run as drawn (random-model pictures, not colours): each frame's pixels, resized to its panel, are there.
    content = read_run(drawn)
    settings = ExportSettings(dpi=60, comic_style="four-panel")
    pages = plan_export(content, "comic", settings)
    written = export_run(drawn, "png", "comic", tmp_path / "pages", settings)
    assert len(written) == math.ceil(FRAMES / 4) == len(pages)
    for path, page in zip(written, pages, strict=True):
        image = Image.open(path).convert("RGB")
        for panel in page.panels:
            box = panel.box
            # The middle of a four-panel picture carries no lettering (narration sits at the bottom, speech on top).
            inner = (
                box.left + box.width // 4,
                box.top + box.height // 3,
                box.right - box.width // 4,
                box.bottom - box.height // 3,
            )
            expected = (
                Image.open(content.frames[panel.frame]).convert("RGB").resize(box.size, Image.Resampling.LANCZOS)
            )
            region = (inner[0] - box.left, inner[1] - box.top, inner[2] - box.left, inner[3] - box.top)
            got, want = image.crop(inner), expected.crop(region)
            difference = sum(abs(a - b) for a, b in zip(got.tobytes(), want.tobytes(), strict=True)) / len(
                got.tobytes()
            )
            others = [
                Image.open(content.frames[other])
                .convert("RGB")
                .resize(box.size, Image.Resampling.LANCZOS)
                .crop(region)
                for other in range(FRAMES)
                if other != panel.frame
            ]
            nearest_other = min(
                sum(abs(a - b) for a, b in zip(got.tobytes(), o.tobytes(), strict=True)) / len(got.tobytes())
                for o in others
            )
            assert difference < 2 and difference < nearest_other / 3, (panel.frame, difference, nearest_other)


def test_a_long_list_of_missing_frames_is_counted_not_spelled_out(run, monkeypatch):
    from storycast.export import source

    monkeypatch.setattr(source, "MISSING_SHOWN", 2)
    for index in (1, 2, 5):
        (run / "frames" / f"frame_{index:03d}.png").unlink()
    with pytest.raises(
        ExportError, match=r"missing 3 of its 7 frames: 1 \(frames/frame_001.png\), 2 \(.*\) and 1 more"
    ):
        export_run(run, "pdf", "comic")


# Damaged runs and outputs that are not ours: a clear refusal, never a traceback, never a lost file -----------


@pytest.mark.parametrize("damage", ["not an image", "truncated", "empty", "20000x20000"])
@pytest.mark.parametrize("format", ["html", "pdf", "cbz", "png"])
def test_every_format_refuses_a_damaged_frame_alike(run, damage, format):
    frame = run / "frames" / "frame_002.png"
    if damage == "not an image":
        frame.write_text("hello")
    elif damage == "truncated":
        frame.write_bytes(frame.read_bytes()[:120])
    elif damage == "empty":
        frame.write_bytes(b"")
    else:
        Image.new("1", (20000, 20000)).save(frame)  # a decompression bomb to PIL
    with pytest.raises(ExportError, match=r"frame '.*frame_002.png' cannot be read as an image.*Fix: delete it"):
        export_run(run, format, "grid", settings=ExportSettings(dpi=40))
    assert not (run / "exports").exists() or not any((run / "exports").iterdir())


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: m.__setitem__("story", [1, 2]), "'story' is a list, not the mapping"),
        (lambda m: m.__setitem__("method", "x"), "'method' is a str, not the mapping"),
        (lambda m: m["frames"][0].__setitem__("file", "frames/fr\x00ame.png"), "holds a NUL character"),
    ],
)
def test_a_damaged_manifest_is_one_clear_error(run, capsys, edit, says):
    from storycast.cli.main import main

    manifest = json.loads((run / "manifest.json").read_text())
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", str(run), "--format", "pdf"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Fix:" in err and "Traceback" not in err


@pytest.mark.parametrize("format", ["pdf", "cbz"])
def test_a_title_of_200000_characters_is_cut_to_its_page(run, tmp_path, format):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["story"]["title"] = "x" * 200_000  # one "word": wrapped at the line's width, not drawn whole
    (run / "manifest.json").write_text(json.dumps(manifest))
    (written,) = export_run(run, format, "book", tmp_path / f"book.{format}", ExportSettings(dpi=40))
    assert written.stat().st_size > 0


def test_a_long_book_pdf_holds_one_page_at_a_time(run, tmp_path, monkeypatch):
    import gc
    import weakref

    from storycast.export import render

    alive, most = 0, 0
    original = render.render_page

    def gone():
        nonlocal alive
        alive -= 1

    def counting(*args, **kwargs):
        nonlocal alive, most
        gc.collect()  # pages the writer let go of are counted as gone before the next is drawn
        page = original(*args, **kwargs)
        alive += 1
        most = max(most, alive)
        weakref.finalize(page, gone)
        return page

    monkeypatch.setattr(render, "render_page", counting)
    (pdf,) = export_run(run, "pdf", "book", tmp_path / "book.pdf", ExportSettings(dpi=40))
    assert most <= 2, f"{most} of {FRAMES + 1} pages were held at once"
    assert pdf.read_bytes().startswith(b"%PDF-1.4") and pdf.read_bytes().rstrip().endswith(b"%%EOF")


def test_outputs_of_the_user_are_never_replaced_or_written_through(run, tmp_path, capsys):
    from storycast.cli.main import main

    mine = tmp_path / "mine.pdf"
    mine.write_bytes(b"my own pdf")
    assert main(["export", str(run), "-o", str(mine), "--dpi", "40"]) == 2
    assert "already exists" in capsys.readouterr().err and mine.read_bytes() == b"my own pdf"
    assert main(["export", str(run), "-o", str(mine), "--dpi", "40", "--overwrite"]) == 0
    assert mine.read_bytes().startswith(b"%PDF")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "comic.pdf").write_bytes(b"someone else's")
    (run / "exports").symlink_to(elsewhere, target_is_directory=True)
    assert main(["export", str(run), "--dpi", "40"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err
    assert (elsewhere / "comic.pdf").read_bytes() == b"someone else's"

    pages = tmp_path / "pages"
    pages.mkdir()
    link = tmp_path / "pages-link"
    link.symlink_to(pages, target_is_directory=True)
    assert main(["export", str(run), "--format", "png", "-o", str(link), "--dpi", "40"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err and link.is_symlink()


@needs_pdftoppm
def test_the_streamed_pdf_keeps_any_title_and_each_page_size(tmp_path):
    from storycast.export.pdf import write_pdf_stream

    title = "Mara’s tale — 日本 🙂 (a) \\ <b>"
    pages = (Image.new("RGB", (200 + 10 * i, 300), COLOR) for i, COLOR in enumerate([(200, 0, 0), (0, 200, 0)]))
    pdf = write_pdf_stream(tmp_path / "t.pdf", pages, dpi=100, title=title, subject="s", creator="storycast")
    info = subprocess.run(["pdfinfo", "-f", "1", "-l", "2", str(pdf)], capture_output=True, text=True, check=True)
    assert f"Title:           {title}" in info.stdout and "Pages:           2" in info.stdout
    assert "144 x 216 pts" in info.stdout and "151.2 x 216 pts" in info.stdout
    assert info.stderr == ""
    with pytest.raises(ValueError, match="at least one page"):
        write_pdf_stream(tmp_path / "none.pdf", [], dpi=100, title="t")
    assert not (tmp_path / "none.pdf").exists()
