"""The identity finder of a method that reads PhotoMaker v1 identities with IdentityStory's discovery settings
(``identitystory``, and ``photomaker`` for characters without photos): the discovery itself and the identity library
lookups are :mod:`storycast.identity.discovery`; this ties them to a method's PhotoMaker, budget and progress."""

from __future__ import annotations

from typing import Any

from storycast.identity.discovery import IdentityFinder
from storycast.identity.library import IdentityLibrary
from storycast.methods.base import ProgressEvent, RunContext
from storycast.story.model import Story


def identity_finder(method: Any, story: Story, library: IdentityLibrary, context: RunContext) -> IdentityFinder:
    """Finds identities with ``method``'s PhotoMaker (``method.adapter``, attached when first needed), the PhotoMaker
    weights and resolved discovery budget of its settings (``photomaker``, ``discovery``), and its progress."""
    photomaker = method.settings.photomaker
    return IdentityFinder(
        adapter=lambda: method.adapter,
        library=library,
        model_info=method.models.info,
        adapter_id={"photomaker": photomaker.source, "file": photomaker.file},
        budget=method.resolved_settings(story).discovery.budget(story.settings.width, story.settings.height),
        on_progress=lambda done, total, label: context.progress(ProgressEvent("discovery", done, total, label)),
    )
