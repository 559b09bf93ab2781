"""The Gradio page of ``storycast app``: a thin layer over :mod:`storycast.app`'s plain functions.

Imported only by ``storycast app`` (it imports gradio). Each handler reads the form, calls the same library
functions as the CLI (the story parser, the run planner and runner, the identity library, the exporter) and
shows what they return; nothing here decides what to draw.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from storycast.app import drawing, identities, method_form, story_form
from storycast.app.config import MAX_STORY_UPLOAD_BYTES, AppConfig, bind_notice
from storycast.app.folders import AppFolders, AppRequestError, store_photo, store_story_file
from storycast.errors import StorycastError, StoryError

logger = logging.getLogger(__name__)

SLOTS = story_form.MAX_CHARACTERS
SEED_LIMIT = 2**32
"""A new random seed for a redrawn frame is drawn below this (the user may type any seed up to 2**64 - 1)."""
CSS = "#status {min-height: 2.5em} .storycast-note {opacity: 0.8}"


class App:
    """The app's server-side parts: its folders, the drawer (models kept between drawings), the library."""

    def __init__(self, config: AppConfig):
        from storycast.identity.library import IdentityLibrary
        from storycast.utils.environment import default_cache_dir

        self.config = config
        self.folders = AppFolders.create(config.root)
        self.drawer = drawing.Drawer(
            self.folders, cache_dir=config.cache_dir, device=config.device, max_frames=config.max_frames
        )
        self.library = IdentityLibrary((config.cache_dir or default_cache_dir()) / "identities")
        self.stops: dict[str, threading.Event] = {}

    def upload_sources(self) -> tuple[Path, ...]:
        """Where Gradio puts the files it receives (an upload path elsewhere is refused)."""
        from gradio.utils import get_upload_folder

        return (Path(get_upload_folder()),)


def _methods() -> list[str]:
    from storycast.methods.registry import list_methods

    return list_methods()


def _presets() -> list[str]:
    from storycast.models.presets import BASE_PRESETS

    return list(BASE_PRESETS)


def _settings_class(method: str) -> Any:
    from storycast.methods.registry import get_method

    return get_method(method).settings_class


def _method_help(method: str) -> tuple[str, str]:
    from storycast.methods.registry import get_method

    cls = get_method(method)
    return f"**{cls.name}**: {cls.summary} [{', '.join(cls.families)}]", method_form.settings_help(cls.settings_class)


def _problem(err: Exception, fields: story_form.StoryFields | None = None) -> str:
    """A refusal as the page shows it (Markdown): every problem of a story, each on its line, or the message.

    The page's handlers show refusals in a note beside the action instead of raising them: a raised error reaches
    the page as a toast that fades and an empty "Error" badge on every output."""
    if isinstance(err, StoryError):
        slots = story_form.used_slots(fields) if fields is not None else None
        return "⚠ **The story has problems:**\n" + "\n".join(
            f"- {line}" for line in story_form.problem_lines(err, slots)
        )
    return f"⚠ {err}"


def _unchanged(count: int) -> list[Any]:
    return [gr.update()] * count


def build(app: App) -> gr.Blocks:
    """The page. Drawing events share one concurrency group of size 1: one drawing at a time on the device."""
    folders = app.folders
    methods, presets = _methods(), _presets()
    default_method = "vanilla" if "vanilla" in methods else methods[0]
    story_limit = min(MAX_STORY_UPLOAD_BYTES, app.config.max_upload_bytes)
    story_limit_mb = story_limit / 2**20

    # Gradio's own copies of uploads and outputs are cleared after a day.
    with gr.Blocks(title="storycast", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        doc_state = gr.State({})
        photos_state = gr.State([[] for _ in range(SLOTS)])
        run_state = gr.State(None)
        method_values = gr.State({})
        settings_version = gr.Number(0, visible=False)

        gr.Markdown("# storycast\nWrite a story, draw it with consistent characters, redraw a frame, download it.")
        with gr.Row():
            # -- the story -------------------------------------------------------------------------------
            with gr.Column(scale=5):
                with gr.Row():
                    story_upload = gr.UploadButton(
                        f"Load a story file (.yaml, .json; at most {story_limit_mb:g} MiB)",
                        file_types=[".yaml", ".yml", ".json"],
                        size="sm",
                    )
                    runs = gr.Dropdown(
                        folders.run_names(), label="Runs", value=None, scale=2, allow_custom_value=True, elem_id="runs"
                    )
                    open_button = gr.Button("Open run", size="sm")
                examples = _example_stories(app.config.example_folder)
                if examples:
                    with gr.Row(elem_id="examples"):
                        gr.Markdown("Start from an example:", elem_classes="storycast-note")
                        example_buttons = [
                            (gr.Button(label, size="sm", elem_id=f"example-{path.stem}"), path)
                            for label, path in examples
                        ]
                else:
                    example_buttons = []
                load_notes = gr.Markdown(elem_classes="storycast-note", elem_id="load-notes")
                title = gr.Textbox(label="Title", elem_id="title")
                with gr.Row():
                    style = gr.Textbox(label="Style (before each frame)", placeholder="A watercolor illustration of")
                    style_suffix = gr.Textbox(label="Style (after each frame)", placeholder=", storybook, soft light")
                slot_fields: list[tuple[gr.Textbox, gr.Textbox, gr.Textbox, gr.Textbox, gr.Textbox]] = []
                slot_photos: list[tuple[gr.File, gr.Markdown]] = []
                with gr.Tabs():
                    for number in range(1, SLOTS + 1):
                        with gr.Tab(f"Character {number}"):
                            with gr.Row():
                                cid = gr.Textbox(label="id (write {id} in a frame)", elem_id=f"char{number}-id")
                                name = gr.Textbox(label="name (captions)", elem_id=f"char{number}-name")
                                class_word = gr.Textbox(
                                    label="class word", placeholder="woman", elem_id=f"char{number}-class"
                                )
                            description = gr.Textbox(
                                label="description (holds the class word)",
                                placeholder="a young woman with short red hair",
                                elem_id=f"char{number}-description",
                            )
                            photos = gr.File(
                                label=f"photos (optional; images only, at most {app.config.max_upload_mb:g} MiB each)",
                                file_count="multiple",
                                file_types=["image"],
                            )
                            photos_note = gr.Markdown(elem_classes="storycast-note")
                            identity = gr.Textbox(
                                label="identity (optional: a key of the identity library, below)",
                                elem_id=f"char{number}-identity",
                            )
                            slot_fields.append((cid, name, class_word, description, identity))
                            slot_photos.append((photos, photos_note))
                frames = gr.Textbox(
                    label="Frames, one a line ({id} names a character)",
                    lines=5,
                    placeholder="{mara} reading a letter by the window\n{mara} walking on the beach at dusk",
                    elem_id="frames",
                )
                with gr.Row():
                    # Text, not number fields: blank is "the default", which a number field cannot hold.
                    width = gr.Textbox(label="width", placeholder="default", elem_id="width")
                    height = gr.Textbox(label="height", placeholder="default", elem_id="height")
                    steps = gr.Textbox(label="steps", placeholder="default", elem_id="steps")
                    guidance = gr.Textbox(label="guidance scale", placeholder="default", elem_id="guidance")
                    seed = gr.Textbox(label="seed", placeholder="0", elem_id="seed")
                negative = gr.Textbox(label="negative prompt (blank: the method's)")
                gr.Markdown("Blank settings take the model preset's defaults.", elem_classes="storycast-note")
                with gr.Accordion("Method and model", open=True):
                    with gr.Row():
                        method = gr.Dropdown(methods, value=default_method, label="method", elem_id="method")
                        preset = gr.Dropdown(presets, value=app.config.preset, label="model preset", elem_id="preset")
                    summary_text, help_text = _method_help(default_method)
                    method_summary = gr.Markdown(summary_text)

                    @gr.render(
                        inputs=[method, method_values], triggers=[method.change, settings_version.change, demo.load]
                    )
                    def method_fields(name: str, values: dict[str, Any]) -> None:
                        current = values.get(name, {})
                        for spec in method_form.main_fields(_settings_class(name)):
                            field = _field(spec, current.get(spec.name, spec.value))
                            field.change(
                                functools.partial(_set_value, name, spec.name), [field, method_values], method_values
                            )

                    more_settings = gr.Textbox(
                        label="more settings (KEY=VALUE a line, as --set)", lines=2, placeholder="attention.sa32=0.5",
                        elem_id="more-settings",
                    )  # fmt: skip
                    with gr.Accordion("All settings of this method", open=False):
                        method_help = gr.Markdown(help_text)

            # -- drawing and the run -----------------------------------------------------------------------
            with gr.Column(scale=6):
                with gr.Row():
                    draw_button = gr.Button("Draw", variant="primary", elem_id="draw")
                    # Greyed out while nothing draws; the drawing's own updates switch it on and off.
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                    new_run_button = gr.Button("New run", elem_id="new-run")
                check = gr.Markdown(
                    "The story is checked against the method as you write it.", elem_id="check",
                    elem_classes="storycast-note",
                )  # fmt: skip
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Frames", columns=4, height="auto", elem_id="gallery", interactive=False)
                table = gr.Dataframe(
                    headers=drawing.FRAME_TABLE_HEADERS, type="array", interactive=False, label="Frames of the run"
                )
                with gr.Accordion("Redraw one frame", open=True):
                    gr.Markdown(
                        "Click a frame above to pick it: it is redrawn with a new seed (typed, or random) or its own "
                        "seed and a new text, and the other frames are kept.",
                        elem_classes="storycast-note",
                    )
                    with gr.Row():
                        redraw_number = gr.Number(label="frame", precision=0, value=1, elem_id="redraw-frame")
                        redraw_seed = gr.Textbox(label="new seed", placeholder="random", elem_id="redraw-seed")
                        redraw_same = gr.Checkbox(
                            label="keep its seed (redraw with the new text)", value=False, elem_id="redraw-same-seed"
                        )
                    redraw_text = gr.Textbox(label="new text (blank: keep)", elem_id="redraw-text")
                    redraw_button = gr.Button("Redraw this frame", elem_id="redraw")
                storyboard = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="storyboard")
                with gr.Accordion("Comic pages (the export's comic layout)", open=True):
                    comic = gr.Gallery(
                        label="Comic pages", columns=2, height="auto", interactive=False, elem_id="comic-preview"
                    )
                    comic_note = gr.Markdown(elem_classes="storycast-note", elem_id="comic-note")
                with gr.Accordion("Evaluation (runs scored with `storycast evaluate`)", open=False):
                    pictures = gr.Gallery(label="Contact sheet and chart", columns=2, interactive=False)
                    scores = gr.Markdown()
                with gr.Accordion("Download", open=True):
                    with gr.Row():
                        export_format = gr.Dropdown(
                            ["pdf", "cbz", "html", "png"], value="pdf", label="format", elem_id="export-format"
                        )
                        export_layout = gr.Dropdown(
                            ["comic", "grid", "book"], value="comic", label="layout", elem_id="export-layout"
                        )
                        export_button = gr.Button("Export", elem_id="export")
                    with gr.Row():
                        export_file = gr.DownloadButton("Download the export", visible=False, elem_id="export-file")
                        run_button = gr.Button("Archive the run (.zip)", elem_id="archive")
                        run_file = gr.DownloadButton("Download the run", visible=False, elem_id="run-file")

        # -- the identity library -------------------------------------------------------------------------
        with gr.Accordion("Identity library", open=False, elem_id="library"):
            library_button = gr.Button("Show the library", size="sm", elem_id="library-refresh")
            library_gallery = gr.Gallery(label="Previews", columns=6, interactive=False)
            library_table = gr.Dataframe(
                headers=["key", "character", "source", "from"], type="array", interactive=False, label="Identities"
            )
            with gr.Row():
                library_key = gr.Dropdown([], label="identity", elem_id="library-key")
                library_slot = gr.Dropdown(
                    [str(n) for n in range(1, SLOTS + 1)], value="1", label="for character", elem_id="library-slot"
                )
                reuse_button = gr.Button("Use it", elem_id="library-use")
            library_note = gr.Markdown(elem_classes="storycast-note")

        # -- wiring ---------------------------------------------------------------------------------------
        form = [title, style, style_suffix, *[c for slot in slot_fields for c in slot], frames]
        form += [width, height, steps, guidance, seed, negative]
        # Handlers that take many fields get them as one {component: value} mapping (Gradio's set inputs).
        draw_inputs = {*form, doc_state, photos_state, run_state, method, preset, method_values, more_settings}
        view = [gallery, table, storyboard, pictures, scores, comic, comic_note]
        draw_outputs = [status, run_state, doc_state, *view, runs, export_file, run_file, stop_button]

        def fields_of(data: dict[Any, Any]) -> story_form.StoryFields:
            photos = data[photos_state]
            slots = [
                story_form.CharacterFields(
                    id=data[cid] or "",
                    name=data[name] or "",
                    class_word=data[class_word] or "",
                    description=data[description] or "",
                    photos=tuple(photos[number]),
                    identity=data[identity] or "",
                )
                for number, (cid, name, class_word, description, identity) in enumerate(slot_fields)
            ]
            values = (width, height, steps, guidance, seed, negative)
            settings = {key: data[c] for key, c in zip(story_form.FORM_SETTINGS, values, strict=True)}
            return story_form.StoryFields(
                data[title] or "", data[style] or "", data[style_suffix] or "", slots, data[frames] or "", settings
            )

        def form_values(fields: story_form.StoryFields) -> list[Any]:
            values: list[Any] = [fields.title, fields.style, fields.style_suffix]
            for slot in fields.characters:
                values += [slot.id, slot.name, slot.class_word, slot.description, slot.identity]
            values.append(fields.frames)
            shown = [fields.settings.get(name) for name in story_form.FORM_SETTINGS]
            values += ["" if value is None else str(value) for value in shown]
            return values

        def view_values(run: str | None, story: Any = None) -> list[Any]:
            if run is None:
                return [[], drawing.frame_table(story, None) if story is not None else [], None, [], "", [], ""]
            run_dir = folders.run_dir(run)
            shown = drawing.run_view(run_dir)
            rows = drawing.frame_table(story, run_dir) if story is not None else []
            frames_v = [(str(p), c) for p, c in shown.frames]
            pictures_v = [(str(p), c) for p, c in shown.pictures]
            try:
                pages, comic_v = drawing.comic_preview(run_dir), ""
            except StorycastError as err:
                pages, comic_v = [], f"No comic pages yet: {err}"
            board = str(shown.storyboard) if shown.storyboard else None
            return [frames_v, rows, board, pictures_v, shown.scores, pages, comic_v]

        def drawing_parts(data: dict[Any, Any], doc: dict) -> tuple[Any, str, dict[str, Any]]:
            """The story, method and settings of a drawing from the form (the planner's and the app's checks
            come after, in :meth:`~storycast.app.drawing.Drawer.plan`)."""
            story = story_form.check_document(doc, folders)
            method_v = data[method]
            settings = method_form.overrides(
                _settings_class(method_v), data[method_values].get(method_v, {}), data[more_settings]
            )
            return story, method_v, settings

        def refused(message: str) -> list[Any]:
            """The drawing outputs when a drawing is refused before it starts: the message in the status."""
            return [message, *_unchanged(len(draw_outputs) - 2), gr.update(interactive=False)]

        def draw_story(doc: dict, fields: story_form.StoryFields, data: dict[Any, Any], request: gr.Request) -> Any:
            try:
                story, method_v, settings = drawing_parts(data, doc)
                updates = app.drawer.draw(
                    story, method_v, data[preset], settings, data[run_state], stop=_stop_for(app, request)
                )
                first = next(updates)
            except StorycastError as err:
                yield refused(_problem(err, fields))
                return
            hidden, busy = gr.update(visible=False), gr.update(interactive=True)
            shown_frames: list[Any] = []
            # Closed explicitly: a page that leaves closes this generator, and closing the drawing's stops it.
            with contextlib.closing(updates):
                for update in _chain(first, updates):
                    frames_v = [(str(p), c) for p, c in update.frames]
                    if not update.finished:
                        gallery_v = gr.update() if frames_v == shown_frames else frames_v
                        shown_frames = frames_v
                        yield [update.status, update.run, doc, gallery_v, *_unchanged(len(view) - 1), gr.update(),
                               hidden, hidden, busy]  # fmt: skip
                        continue
                    outcome = f"**{update.status}**" if not update.failed else f"⚠ {update.status}"
                    run_names = gr.update(choices=folders.run_names(), value=update.run)
                    yield [outcome, update.run, doc, *view_values(update.run, story), run_names, hidden, hidden,
                           gr.update(interactive=False)]  # fmt: skip

        def on_draw(data: dict[Any, Any], request: gr.Request) -> Any:
            fields = fields_of(data)
            yield from draw_story(story_form.build_document(fields, data[doc_state]), fields, data, request)

        def on_redraw(data: dict[Any, Any], request: gr.Request) -> Any:
            if data[run_state] is None:
                yield [gr.update(), *refused("⚠ Draw the story first: a frame is redrawn inside its run.")]
                return
            fields = fields_of(data)
            doc = story_form.build_document(fields, data[doc_state])
            typed = str(data[redraw_seed] or "").strip()
            number = int(data[redraw_number] or 0)
            try:
                if data[redraw_same]:
                    chosen = _kept_seed(folders.run_dir(data[run_state]), number)
                else:
                    chosen = story_form.seed_value(typed) if typed else secrets.randbelow(SEED_LIMIT)
                doc = story_form.set_frame(doc, number, seed=chosen, text=data[redraw_text] or None)
            except StorycastError as err:
                yield [gr.update(), *refused(_problem(err))]
                return
            frames_v = story_form.document_to_fields(doc).frames
            for outputs in draw_story(doc, fields, data, request):
                yield [frames_v, *outputs]

        draw_button.click(
            on_draw, draw_inputs, draw_outputs, concurrency_id="device", concurrency_limit=1, api_name="draw_form",
            api_visibility="undocumented",
        )  # fmt: skip
        redraw_button.click(
            on_redraw,
            {redraw_number, redraw_seed, redraw_same, redraw_text, *draw_inputs},
            [frames, *draw_outputs],
            concurrency_id="device",
            concurrency_limit=1,
            api_name="redraw_frame",
            api_visibility="undocumented",
        )

        def on_pick(run: str | None, event: gr.SelectData) -> Any:
            """A click on a frame of the gallery picks it for Redraw (its number, and its text to edit)."""
            if run is None:
                return [*_unchanged(3), "⚠ Draw or open a run first."]
            try:
                record = drawing.shown_frame(folders.run_dir(run), int(event.index))
            except StorycastError as err:
                return [*_unchanged(3), _problem(err)]
            number = int(record["index"]) + 1
            said = f"Frame {number} (seed {record.get('seed')}) is picked: Redraw this frame redraws it."
            return [number, record.get("text") or "", False, said]

        gallery.select(
            on_pick, run_state, [redraw_number, redraw_text, redraw_same, status], api_visibility="private"
        )  # fmt: skip

        def on_stop(request: gr.Request) -> str:
            return _on_stop(app, request)

        stop_button.click(on_stop, None, status, queue=False, api_visibility="private")

        def on_new_run() -> Any:
            return None, "The next drawing starts a new run.", *view_values(None)

        new_run_button.click(on_new_run, None, [run_state, status, *view], api_visibility="private")

        # -- checking the story as it is written (the planner's checks, no model loaded) -------------------
        def on_check(data: dict[Any, Any]) -> str:
            fields = fields_of(data)
            if not fields.frames.strip():
                return "Write a frame a line (or load a story) to draw."
            try:
                story, method_v, settings = drawing_parts(data, story_form.build_document(fields, data[doc_state]))
                run_v = data[run_state]
                return drawing.readiness(*app.drawer.plan(story, method_v, data[preset], settings, run_v), run_v)
            except StorycastError as err:
                return _problem(err, fields)

        checked_by = [*form, method, preset, method_values, more_settings, photos_state, run_state]
        # Not queued: the check is cheap (milliseconds) and must not take a drawing's place in the queue;
        # "always_last" runs it once for the last of a burst of keystrokes instead of once for each.
        gr.on(
            [c.change for c in checked_by], on_check, draw_inputs, check, queue=False, trigger_mode="always_last",
            show_progress="hidden", api_name="check_story", api_visibility="undocumented",
        )  # fmt: skip

        # -- loading a story or a run -------------------------------------------------------------------
        load_outputs = [*form, doc_state, photos_state, run_state, load_notes, *[n for _, n in slot_photos]]
        notes_at = load_outputs.index(load_notes)

        def loaded(doc: dict, notes: list[str], run: str | None) -> list[Any]:
            fields = story_form.document_to_fields(doc)
            photos = [list(slot.photos) for slot in fields.characters]
            notes_md = "\n".join(f"- {n}" for n in notes)
            return [*form_values(fields), doc, photos, run, notes_md, *[_photos_note(p) for p in photos]]

        def not_loaded(message: str) -> list[Any]:
            outputs = _unchanged(len(load_outputs))
            outputs[notes_at] = message
            return outputs

        def on_story_file(file: Any) -> Any:
            try:
                path = store_story_file(
                    _upload_path(file), folders, max_bytes=story_limit, sources=app.upload_sources(),
                )  # fmt: skip
                doc, notes = story_form.load_document(path, folders)
                return loaded(doc, notes, None)
            except StorycastError as err:
                return not_loaded(_problem(err))

        story_upload.upload(on_story_file, story_upload, load_outputs, api_name="load_story")

        for button, path in example_buttons:

            def on_example(path: Path = path) -> Any:
                try:
                    doc, notes = story_form.load_document(path, folders)
                except StorycastError as err:
                    return not_loaded(_problem(err))
                return loaded(doc, [f"the example story {path.name}: edit it, or Draw it as it is", *notes], None)

            button.click(on_example, None, load_outputs, api_name=f"example_{path.stem}")

        def on_open(name: str | None, version: float | None) -> Any:
            open_outputs = len(load_outputs) + 5 + len(view) + 1
            if not name:
                return [*_unchanged(open_outputs - 1), "⚠ Pick a run first."]
            try:
                run_dir = folders.run_dir(name)
                doc, manifest, notes = drawing.run_document(run_dir, folders)
                story = story_form.check_document(doc, folders)
            except StorycastError as err:
                return [*_unchanged(open_outputs - 1), _problem(err)]
            method_v = (manifest.get("method") or {}).get("name", default_method)
            source = (manifest.get("model") or {}).get("source")
            fields_v, more = method_form.overrides_of_run(
                _settings_class(method_v), (manifest.get("method") or {}).get("settings") or {}
            )
            preset_v = source if source in presets else gr.update()
            return [
                *loaded(doc, notes, name),
                method_v,
                preset_v,
                {method_v: fields_v},
                more,
                (version or 0) + 1,  # the method's fields are shown again, with the run's values
                *view_values(name, story),
                drawing.run_view(run_dir).summary,
            ]

        open_button.click(
            on_open,
            [runs, settings_version],
            [*load_outputs, method, preset, method_values, more_settings, settings_version, *view, status],
            api_name="open_run",
        )
        runs.focus(lambda: gr.update(choices=folders.run_names()), None, runs, api_visibility="private")

        # -- photos -----------------------------------------------------------------------------------------
        for number, (photos, note) in enumerate(slot_photos):
            photos.upload(
                functools.partial(_on_photos, app, number), [photos, photos_state], [photos_state, note],
                api_name=f"photos_{number + 1}",
            )  # fmt: skip
            photos.clear(
                functools.partial(_clear_photos, number), photos_state, [photos_state, note], api_visibility="private"
            )

        # -- method -------------------------------------------------------------------------------------------
        method.change(lambda name: _method_help(name), method, [method_summary, method_help], api_visibility="private")

        def offer_presets(name: str, current: str) -> Any:
            # The presets of the method's families (FLUX's for a method that runs on FLUX), the current one kept.
            from storycast.methods.registry import get_method

            offered, selected = method_form.presets_for(get_method(name).families, current)
            return gr.update(choices=offered, value=selected)

        method.change(offer_presets, [method, preset], preset, api_visibility="private")
        method.input(lambda: "", None, more_settings, api_visibility="private")

        # -- downloads ----------------------------------------------------------------------------------------
        def on_export(run: str | None, format_v: str, layout_v: str) -> Any:
            if run is None:
                return gr.update(), "⚠ Draw or open a run first."
            try:
                path = drawing.export_download(folders.run_dir(run), format_v, layout_v, folders)
            except StorycastError as err:
                return gr.update(), _problem(err)
            return gr.update(value=str(path), visible=True, label=f"Download {path.name}"), f"exported {path.name}"

        export_button.click(
            on_export, [run_state, export_format, export_layout], [export_file, status], concurrency_id="export",
            api_name="export",
        )  # fmt: skip

        def on_archive(run: str | None) -> Any:
            if run is None:
                return gr.update(), "⚠ Draw or open a run first."
            from storycast.app.folders import zip_run

            path = zip_run(folders.run_dir(run), folders)
            return gr.update(value=str(path), visible=True, label=f"Download {path.name}"), f"archived {path.name}"

        run_button.click(on_archive, run_state, [run_file, status], concurrency_id="export", api_visibility="private")

        # -- identity library -----------------------------------------------------------------------------------
        def on_library() -> Any:
            from PIL import Image

            try:
                entries, damaged = identities.list_identities(app.library)
            except StorycastError as err:
                return [*_unchanged(3), _problem(err)]
            previews = []
            for entry in entries:
                if entry.preview is not None:
                    with Image.open(entry.preview) as image:
                        previews.append((image.convert("RGB"), f"{entry.key[:8]} {entry.character}"))
            rows = [[e.key, e.character, e.source, e.what] for e in entries]
            note = f"{len(entries)} identities in {app.library.root}" + "".join(f"\n- damaged: {d}" for d in damaged)
            keys = gr.update(choices=[e.key for e in entries], value=entries[0].key if entries else None)
            return previews, rows, keys, note

        library_button.click(
            on_library, None, [library_gallery, library_table, library_key, library_note], api_visibility="private"
        )

        def on_reuse(key: str | None, slot: str) -> Any:
            width = len(slot_fields[0])
            outputs: list[Any] = _unchanged(width * SLOTS)
            if not key:
                return [*outputs, "⚠ Pick an identity first."]
            try:
                info = app.library.info(key)
            except (StorycastError, ValueError) as err:
                return [*outputs, f"⚠ {err}"]
            reuse = identities.reuse_identity(key, info, folders)
            if reuse.problem:
                return [*outputs, f"⚠ identity {key[:8]} cannot be reused here: {reuse.problem}."]
            number = int(slot) - 1
            outputs[width * number] = reuse.id
            outputs[width * number + 2] = reuse.class_word or gr.update()
            outputs[width * number + 3] = reuse.description or gr.update()
            outputs[width * number + 4] = reuse.identity
            note = (
                f"Character {slot} now names identity {key[:8]}: identitystory and photomaker draw it with that "
                f"identity, whatever its description or photos."
            )
            return [*outputs, note]

        slot_components = [c for slot in slot_fields for c in slot]
        reuse_button.click(
            on_reuse,
            [library_key, library_slot],
            [*slot_components, library_note],
            api_visibility="private",
        )

        # -- the API: a story drawn in one call (scripts, and the tests' concurrent requests) ------------------
        def draw_api(
            story: str, method: str = default_method, preset: str = "", settings: str = "", request: gr.Request = None
        ) -> Iterator[dict]:
            """Draw a story (YAML or JSON text) into a new run; returns the run's name and frames.

            settings: the method's settings as KEY=VALUE lines (as --set).
            """
            try:
                doc = _story_text(story, folders)
                parsed = story_form.check_document(doc, folders)
                overrides = method_form.overrides(_settings_class(method), {}, settings)
                updates = app.drawer.draw(
                    parsed, method, preset or app.config.preset, overrides, stop=_stop_for(app, request)
                )
                first = next(updates)
            except StorycastError as err:
                raise gr.Error(str(err)) from None
            # A generator, so that Gradio closes it when the client goes away: closing the drawing stops it at its
            # next step (frames drawn are kept) and frees the drawing slot. Progress is yielded as it comes.
            last = first
            with contextlib.closing(updates):
                for last in _chain(first, updates):
                    if not last.finished:
                        yield {"run": last.run, "status": last.status, "drawn": [], "kept": []}
            if last.failed:
                raise gr.Error(last.status)
            yield {"run": last.run, "status": last.status, "drawn": last.drawn, "kept": last.kept}

        gr.api(draw_api, api_name="draw", concurrency_id="device", concurrency_limit=1)
    return demo


# -- small handlers ------------------------------------------------------------------------------------------


def _field(spec: method_form.FieldSpec, value: Any) -> Any:
    common = {"label": spec.label, "info": spec.help, "elem_classes": "method-setting"}
    if spec.kind == "checkbox":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(spec.choices), value=str(value), **common)
    if spec.kind == "number":
        return gr.Number(value=value, precision=0 if spec.integer else None, **common)
    return gr.Textbox(value=str(value), **common)


def _set_value(method: str, name: str, value: Any, values: dict[str, Any]) -> dict[str, Any]:
    return {**values, method: {**values.get(method, {}), name: value}}


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _stop_for(app: App, request: gr.Request | None) -> threading.Event:
    """A fresh stop flag for this page's drawing (the Stop button sets it)."""
    event = threading.Event()
    if request is not None and request.session_hash:
        app.stops[request.session_hash] = event
    return event


def _on_stop(app: App, request: gr.Request) -> str:
    event = app.stops.get(request.session_hash or "")
    if event is None or event.is_set():
        return "Nothing is drawing."
    event.set()
    return "Stopping after the current step..."


def _kept_seed(run_dir: Path, number: int) -> int:
    """The seed frame ``number`` (1-based) was drawn with in the run (to redraw it with a new text only)."""
    from storycast.evaluation.runfolders import read_json

    records = (read_json(run_dir / drawing.MANIFEST_NAME) or {}).get("frames") or []
    record = records[number - 1] if 1 <= number <= len(records) else None
    if not isinstance(record, dict) or not isinstance(record.get("seed"), int):
        raise AppRequestError(
            f"frame {number} is not drawn in run {run_dir.name}, so it has no seed to keep. Fix: untick 'keep its "
            f"seed', or pick a drawn frame."
        )
    return record["seed"]


def _example_stories(folder: Path | None) -> list[tuple[str, Path]]:
    """(title, file) of each example story in ``folder`` (a story file that does not parse is left out)."""
    if folder is None or not folder.is_dir():
        return []
    import yaml

    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".yaml", ".yml", ".json") or not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            logger.warning("example story %s is left out: %s", path, err)
            continue
        if isinstance(data, dict) and data.get("frames"):
            found.append((str(data.get("title") or path.stem), path))
    return found


def _upload_path(file: Any) -> Path:
    path = getattr(file, "name", None) or getattr(file, "path", None) or file
    if not isinstance(path, (str, Path)):
        raise AppRequestError("no file arrived. Fix: upload it again.")
    return Path(path)


def _photos_note(photos: list[str]) -> str:
    return f"{len(photos)} photo(s) kept for this character." if photos else ""


def _on_photos(app: App, number: int, files: Any, photos: list[list[str]]) -> Any:
    stored = []
    try:
        for file in files or []:
            stored.append(
                str(
                    store_photo(
                        _upload_path(file), app.folders, max_bytes=app.config.max_upload_bytes,
                        sources=app.upload_sources(),
                    )
                )
            )  # fmt: skip
    except StorycastError as err:
        return gr.update(), _problem(err)
    photos = [list(p) for p in photos]
    photos[number] = stored
    return photos, _photos_note(stored)


def _clear_photos(number: int, photos: list[list[str]]) -> Any:
    photos = [list(p) for p in photos]
    photos[number] = []
    return photos, ""


def _story_text(text: str, folders: AppFolders) -> dict[str, Any]:
    """A story sent as text to the API, read as a story file (the CLI's limits) and sanitized."""
    if not isinstance(text, str) or not text.strip():
        raise AppRequestError("the story is empty. Fix: send the story file's text.")
    data = text.encode("utf-8")
    if len(data) > MAX_STORY_UPLOAD_BYTES:
        raise AppRequestError(f"the story is over {MAX_STORY_UPLOAD_BYTES // 2**20} MiB. Fix: send a shorter one.")
    import uuid

    path = folders.uploads / f"{uuid.uuid4().hex}{'.json' if text.lstrip().startswith('{') else '.yaml'}"
    path.write_bytes(data)
    doc, notes = story_form.load_document(path, folders)
    if notes:
        raise AppRequestError("; ".join(notes))
    return doc


def launch(config: AppConfig, *, block: bool = True) -> tuple[App, gr.Blocks, str]:
    """Build the page and serve it: Gradio's queue runs one drawing at a time and lets ``config.queue_size``
    requests wait (more are told the queue is full); files are served from the run folders and downloads only.

    Returns the app, the page and its local URL; ``block=False`` returns while it serves (tests)."""
    app = App(config)
    # Gradio keeps its copies of uploads under the app's folder too (unless told otherwise).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(app.folders.root / ".gradio"))
    demo = build(app)
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    _, url, share_url = demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=config.share,
        prevent_thread_lock=True,
        allowed_paths=[str(app.folders.runs), str(app.folders.downloads)],
        max_file_size=config.max_upload_bytes,
        show_error=True,
        quiet=True,
        ssr_mode=False,
        css=CSS,
        footer_links=["api"],
    )
    print(bind_notice(config, url), flush=True)
    if share_url:
        print(f"public link: {share_url}", flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return app, demo, url
