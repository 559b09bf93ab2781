"""The app's settings: where it keeps its files, where it listens, and its limits."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from storycast.errors import SettingsError
from storycast.settings import setting

LOCAL_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 8
"""Requests that may wait in the queue; more are refused with Gradio's "queue is full" message."""
DEFAULT_MAX_UPLOAD_MB = 10.0
"""Largest uploaded file (a photo or a story file), in MiB."""
MAX_STORY_UPLOAD_BYTES = 1 << 20
"""Largest story file the app takes (1 MiB; a story of a thousand frames is well under it)."""
DEFAULT_MAX_FRAMES = 64
"""Longest story the app draws. Our own limit (no paper sets one): the app has one drawing slot, and a story of
a thousand frames held it for over 17 minutes (issue 18), so 64 frames hold it about a minute at that pace. Longer
stories are for ``storycast generate``, which resumes and spreads a story over GPUs."""
MAX_FRAMES_LIMIT = 10_000
"""The most ``--max-frames`` may allow (the planner and the page list every frame)."""


@dataclass(frozen=True)
class AppConfig:
    """How ``storycast app`` runs; each field's help is what ``storycast app --help`` says of its flag."""

    root: Path = setting(
        Path("storycast-app"),
        "the app's folder: uploads/ (photos and story files sent to it), runs/ (one run folder per drawing, as "
        "`storycast generate --out` writes) and downloads/ (archives made for download)",
    )
    preset: str = setting("sdxl", "the model preset selected when the page opens (tiny works offline)")
    host: str = setting(LOCAL_HOST, f"address to listen on (default {LOCAL_HOST}: this machine only)")
    port: int | None = setting(None, f"port (default {DEFAULT_PORT}, or the next free one)")
    share: bool = setting(False, "also serve on a public gradio.live link")
    cache_dir: Path | None = setting(
        None, "storycast's cache, with the identity library (default: $STORYCAST_CACHE or ~/.cache/storycast)"
    )
    device: str = setting("auto", "where models run: auto, cpu, cuda, cuda:N or mps")
    queue_size: int = setting(
        DEFAULT_QUEUE_SIZE, "requests that may wait while one drawing runs; more are told the app is busy"
    )
    max_upload_mb: float = setting(
        DEFAULT_MAX_UPLOAD_MB, "largest uploaded photo or story file in MiB (story files at most 1)"
    )
    max_frames: int = setting(
        DEFAULT_MAX_FRAMES,
        "longest story the app draws, in frames; a longer one is refused before anything is drawn (the app has one "
        "drawing slot: draw long stories with `storycast generate`)",
    )
    examples: Path | None = setting(
        None,
        "folder of example stories (.yaml, .json) the page offers to start from (default: the examples/ folder of "
        "a storycast source checkout, when there is one)",
    )

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise SettingsError(f"queue size {self.queue_size} is too small. Fix: let at least 1 request wait.")
        if not 0 < self.max_upload_mb <= 1024:
            raise SettingsError(f"upload limit {self.max_upload_mb} MiB is out of range. Fix: use 1 to 1024 MiB.")
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int):
            raise SettingsError(f"max_frames {self.max_frames!r} is not a whole number. Fix: give one, e.g. 64.")
        if not 1 <= self.max_frames <= MAX_FRAMES_LIMIT:
            raise SettingsError(
                f"max_frames {self.max_frames} is out of range. Fix: use 1 to {MAX_FRAMES_LIMIT} (--max-frames)."
            )
        if self.port is not None and not 1 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is out of range. Fix: use 1 to 65535 (or leave it out).")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def example_folder(self) -> Path | None:
        """Where the page's example stories are: ``examples``, else a source checkout's examples/, else None."""
        if self.examples is not None:
            return self.examples
        checkout = Path(__file__).resolve().parents[3] / "examples"  # src/storycast/app/config.py -> the checkout
        return checkout if (checkout / "lighthouse.yaml").is_file() else None

    @property
    def local_only(self) -> bool:
        """Reachable from this machine only (no other host, no share link)."""
        return self.host in (LOCAL_HOST, "localhost", "::1") and not self.share


def bind_notice(config: AppConfig, url: str | None = None) -> str:
    """What the app says when it starts: where it listens, who can reach it, and how to change that."""
    where = url or f"http://{config.host}:{config.port or DEFAULT_PORT}"
    if config.local_only:
        reach = "reachable from this machine only; --host 0.0.0.0 opens it to your network, --share to the internet"
    elif config.share:
        reach = "--share: anyone with the public link can draw on this machine and see its runs"
    else:
        reach = f"--host {config.host}: anyone who can reach this address can draw on this machine and see its runs"
    return f"storycast app at {where} ({reach}); files under {config.root.resolve()}"


def field_help(name: str) -> str:
    """The help of one of :class:`AppConfig`'s fields (what its command-line flag says)."""
    return next(f.metadata["help"] for f in fields(AppConfig) if f.name == name)
