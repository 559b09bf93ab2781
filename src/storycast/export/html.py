"""One self-contained HTML file of a layout's pages: the frames and fonts inlined, the text as real text.

Each page is a box of the page's proportions (printed at the page size, one page a sheet); panels sit where
the layout puts them, as shares of the page, and type scales with the page's width (``cqw`` units), so the
file looks like the PDF at any window size while its captions stay selectable, searchable and readable by
screen readers.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from collections.abc import Sequence
from pathlib import Path

from storycast.export.layouts import Box, Page, Panel
from storycast.export.render import BOOK_TEXT_SCALE, NARRATION_SHARE, SPEECH_WIDTH_SHARE, Pen
from storycast.export.settings import ExportSettings
from storycast.export.source import RunContent
from storycast.export.typeset import FONT_FAMILIES, font_bytes, split_caption
from storycast.utils.io import atomic_write_text
from storycast.version import __version__

FACES = {"grid": (), "comic": ("comic",), "book": ("serif", "serif-bold")}
"""The shipped faces each layout's HTML embeds (the grid uses the reader's sans-serif, as sheets use Pillow's)."""

CSS = """\
*{box-sizing:border-box}
body{margin:0;padding:16px;background:#e6e6e6;font-family:system-ui,sans-serif;color:#141414}
.page{position:relative;width:min(100%%,%(width_mm).2fmm);aspect-ratio:%(width)d/%(height)d;margin:0 auto 24px;
  background:#fff;overflow:hidden;container-type:inline-size;box-shadow:0 1px 6px rgba(0,0,0,.25);
  --text:%(text).4fcqw;--title:%(title).4fcqw;--book:%(book).4fcqw;--border:%(border).4fcqw;--stroke:%(stroke).4fcqw;
  --pad:%(pad).4fcqw;--tail:%(tail).4fcqw}
.page.sheet{background:#faf9f6}
.page>*{position:absolute;margin:0}
.panel{overflow:hidden}
.panel img,.picture img{display:block;width:100%%;height:100%%;object-fit:cover}
.panel::after{content:"";position:absolute;inset:0;border:var(--border) solid #141414;pointer-events:none}
.narration{position:absolute;left:calc(var(--border) + var(--pad));right:calc(var(--border) + var(--pad));
  bottom:calc(var(--border) + var(--pad));max-height:%(narration)d%%;overflow:hidden;margin:0;padding:var(--pad);
  background:rgba(255,250,222,.92);border:var(--stroke) solid #141414}
.speeches{position:absolute;top:calc(var(--border) + var(--pad));left:calc(var(--border) + var(--pad));
  right:calc(var(--border) + var(--pad));display:flex;flex-wrap:wrap;justify-content:space-between;align-items:flex-start}
.speech{position:relative;max-width:%(speech)d%%;margin:0 0 calc(var(--tail) + var(--pad));padding:var(--pad);
  background:#fff;border:var(--stroke) solid #141414;border-radius:calc(2*var(--pad));text-align:center}
.speech::after{content:"";position:absolute;left:50%%;bottom:calc(-1*var(--tail));border-style:solid;
  border-width:var(--tail) calc(var(--tail)/2) 0;border-color:#141414 transparent transparent}
.narration,.speech{font-family:"Comic Neue",sans-serif;font-size:var(--text);line-height:1.22}
.book-text,.title,.credit,.folio{font-family:"DejaVu Serif",serif;text-align:center}
.book-text{font-size:var(--book);line-height:1.22;overflow:hidden}
.folio{font-size:var(--text);transform:translateY(-50%%)}
.title{font-weight:bold;font-size:var(--title);line-height:1.22}
.credit{font-size:var(--text)}
.cells{display:grid;gap:2cqw;align-content:start}
.cells figure{margin:0}
.cells img{display:block;width:100%%;height:auto}
.cells figcaption{font-size:1.6cqw;line-height:1.3;margin-top:.5cqw}
.sheet-title{font-size:3.2cqw;margin:0 0 2cqw}
@page{size:%(width_mm).2fmm %(height_mm).2fmm;margin:0}
@media print{body{padding:0;background:none}.page{width:%(width_mm).2fmm;margin:0;box-shadow:none;break-after:page}}
"""


def write_html(
    path: str | Path, layout: str, pages: Sequence[Page], content: RunContent, settings: ExportSettings
) -> Path:
    """Write the pages of ``layout`` as one HTML file (see the module's docstring)."""
    return atomic_write_text(path, render_html(layout, pages, content, settings))


def render_html(layout: str, pages: Sequence[Page], content: RunContent, settings: ExportSettings) -> str:
    """The HTML document of ``pages``."""
    if not pages:
        raise ValueError("an HTML export needs at least one page")
    first = pages[0]
    width_mm, height_mm = settings.page_mm
    pen = Pen.of(settings)

    def share(pixels: float) -> float:
        return 100 * pixels / first.width

    css = CSS % {
        "width_mm": width_mm,
        "height_mm": height_mm,
        "width": first.width,
        "height": first.height,
        "text": share(pen.text),
        "title": share(pen.title),
        "book": share(pen.text * BOOK_TEXT_SCALE),
        "border": share(pen.border),
        "stroke": share(pen.stroke),
        "pad": share(pen.pad),
        "tail": share(pen.tail),
        "narration": round(100 * NARRATION_SHARE),
        "speech": round(100 * SPEECH_WIDTH_SHARE),
    }
    fonts = "".join(_font_face(face) for face in FACES.get(layout, ()))
    body = "\n".join(_page(page, number, content) for number, page in enumerate(pages, start=1))
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="storycast {__version__}">\n'
        f"<title>{html.escape(content.title)}</title>\n"
        f"<style>\n{fonts}{css}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _font_face(face: str) -> str:
    data = base64.b64encode(font_bytes(face)).decode("ascii")
    kind = "opentype" if face.startswith("comic") else "truetype"
    weight = "bold" if face.endswith("-bold") else "normal"
    return (
        f'@font-face{{font-family:"{FONT_FAMILIES[face]}";font-weight:{weight};'
        f'src:url(data:font/{"otf" if kind == "opentype" else "ttf"};base64,{data}) format("{kind}")}}\n'
    )


def _place(box: Box, page: Page) -> str:
    return (
        f"left:{100 * box.left / page.width:.4f}%;top:{100 * box.top / page.height:.4f}%;"
        f"width:{100 * box.width / page.width:.4f}%;height:{100 * box.height / page.height:.4f}%"
    )


def _image(content: RunContent, index: int) -> str:
    from storycast.export.render import load_frame

    load_frame(content, index)  # decoded whole, as the other formats do: a damaged frame is refused, not embedded
    path = content.frames[index]
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(content.captions[index], quote=True)
    return f'<img src="data:{mime};base64,{data}" alt="{alt}">'


def _page(page: Page, number: int, content: RunContent) -> str:
    label = f'aria-label="page {number}"'
    if page.kind == "title":
        area = page.area
        title_box = Box(
            area.left, area.top + round(area.height * 0.25), area.right, area.top + round(area.height * 0.55)
        )
        credit = Box(area.left, title_box.bottom, area.right, area.bottom)
        return (
            f'<section class="page title-page" {label}>\n'
            f'<h1 class="title" style="{_place(title_box, page)};display:flex;align-items:flex-end;justify-content:center">'
            f"{html.escape(content.title)}</h1>\n"
            f'<p class="credit" style="{_place(credit, page)};padding-top:2cqw">Illustrated with storycast · '
            f"{html.escape(content.method)}</p>\n</section>"
        )
    if page.kind == "sheet":
        return _sheet(page, label, content, number == 1)
    parts = [f'<section class="page" {label}>']
    for panel in page.panels:
        parts.append(
            _book_panel(panel, page, content) if panel.text is not None else _comic_panel(panel, page, content)
        )
    parts.append("</section>")
    return "\n".join(parts)


def _comic_panel(panel: Panel, page: Page, content: RunContent) -> str:
    lettering = split_caption(content.captions[panel.frame])
    inner = [_image(content, panel.frame)]
    if lettering.speech:
        speech = "".join(f'<p class="speech">{html.escape(text)}</p>' for text in lettering.speech)
        inner.append(f'<div class="speeches">{speech}</div>')
    if lettering.narration:
        inner.append(f'<p class="narration">{html.escape(lettering.narration)}</p>')
    return (
        f'<figure class="panel" data-frame="{panel.frame}" style="{_place(panel.box, page)}">{"".join(inner)}</figure>'
    )


def _book_panel(panel: Panel, page: Page, content: RunContent) -> str:
    assert panel.text is not None
    margin = page.height - page.area.bottom
    folio = Box(page.area.left, page.height - margin // 2, page.area.right, page.height - margin // 2)
    return (
        f'<figure class="picture" data-frame="{panel.frame}" style="{_place(panel.box, page)}">'
        f"{_image(content, panel.frame)}</figure>\n"
        f'<p class="book-text" style="{_place(panel.text, page)}">{html.escape(content.captions[panel.frame])}</p>\n'
        f'<p class="folio" style="{_place(folio, page)};height:auto">{panel.frame + 1}</p>'
    )


def _sheet(page: Page, label: str, content: RunContent, first: bool) -> str:
    cells = "\n".join(
        f'<figure class="cell" data-frame="{i}">{_image(content, i)}'
        f"<figcaption>{i + 1}. {html.escape(content.captions[i])}</figcaption></figure>"
        for i in page.sheet
    )
    title = f'<h1 class="sheet-title">{html.escape(content.title)}</h1>\n' if first else ""
    area = page.area
    return (
        f'<section class="page sheet" {label}>\n<div style="{_place(Box(area.left, area.top, area.right, area.top), page)};'
        f'height:auto">\n{title}<div class="cells" style="grid-template-columns:repeat({page.columns or len(page.sheet)},1fr)">'
        f"\n{cells}\n</div>\n</div>\n</section>"
    )
