"""What every adapter attached to loaded models is, and detaching them all."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from storycast.models.loading import LoadedModels


class Attachment(Protocol):
    """Something attached to loaded models."""

    def detach(self) -> None: ...


def detach_all(models: LoadedModels) -> None:
    """Detach every adapter from ``models`` (the base pipeline is as loaded again)."""
    for attachment in list(models.attachments.values()):
        attachment.detach()
    models.attachments.clear()
