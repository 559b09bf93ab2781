"""The app's settings: where it keeps its files, where it listens, and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storycast.errors import SettingsError

LOCAL_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 8
"""Requests that may wait in the queue; more are refused with Gradio's "queue is full" message."""
DEFAULT_MAX_UPLOAD_MB = 10.0
"""Largest uploaded file (a photo or a story file), in MiB."""
MAX_STORY_UPLOAD_BYTES = 1 << 20
"""Largest story file the app takes (1 MiB; a story of a thousand frames is well under it)."""


@dataclass(frozen=True)
class AppConfig:
    """How ``storycast app`` runs.

    Attributes:
        root: The app's folder: ``uploads/`` (photos and story files sent to it), ``runs/`` (one run folder per
            drawing, as ``storycast generate --out`` writes) and ``downloads/`` (archives made for download).
        preset: The model preset selected when the page opens (``tiny`` works offline).
        host: The address to listen on; 127.0.0.1 (this machine only) unless asked otherwise.
        port: The port (None: Gradio's 7860, or the next free one).
        share: Ask Gradio for a public ``*.gradio.live`` link.
        cache_dir: storycast's cache (the identity library); default ``$STORYCAST_CACHE`` or ~/.cache/storycast.
        device: Where models run ("auto", "cpu", "cuda", "cuda:N", "mps").
        queue_size: Requests that may wait while one drawing runs; more are refused as busy.
        max_upload_mb: Largest uploaded file, in MiB.
    """

    root: Path = Path("storycast-app")
    preset: str = "sdxl"
    host: str = LOCAL_HOST
    port: int | None = None
    share: bool = False
    cache_dir: Path | None = None
    device: str = "auto"
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise SettingsError(f"queue size {self.queue_size} is too small. Fix: let at least 1 request wait.")
        if not 0 < self.max_upload_mb <= 1024:
            raise SettingsError(f"upload limit {self.max_upload_mb} MiB is out of range. Fix: use 1 to 1024 MiB.")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is out of range. Fix: use 1 to 65535 (or leave it out).")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

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
