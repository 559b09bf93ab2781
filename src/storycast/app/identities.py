"""The identity library as the app shows it, and an identity reused for a new character.

A story has no field that names a library entry: an identity is found again by its key, the hash of what made
it (:mod:`storycast.identity.library`). So reusing one means giving a character the inputs that key it: for a
*discovered* identity, the description and class word its search prompt was made of (the method then finds the
entry when the model and discovery settings are those it was discovered with, and discovers a new one
otherwise); for one embedded from *photos*, those photos, when they are files the app stored (others are not
read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storycast.app.folders import AppFolders
from storycast.identity.library import PREVIEW_FILE, IdentityLibrary
from storycast.identity.photomaker_prompt import TRIGGER_WORD, remove_trigger_word


@dataclass(frozen=True)
class IdentityEntry:
    """One stored identity, as listed.

    Attributes:
        key: Its library key.
        character: The id of the character it was made for.
        source: "discovered" or "photos".
        what: The search prompt, or the photos' names.
        preview: Its preview sheet, if it has one.
    """

    key: str
    character: str
    source: str
    what: str
    preview: Path | None


def list_identities(library: IdentityLibrary) -> tuple[list[IdentityEntry], list[str]]:
    """Every good entry (damaged ones are set aside by the library) and a line for each damaged one."""
    contents = library.scan()
    entries = []
    for key, info in contents.infos.items():
        what = info.get("prompt") or ", ".join(Path(str(p)).name for p in info.get("photos", []))
        preview = library.path(key) / PREVIEW_FILE
        entries.append(
            IdentityEntry(
                key,
                str(info.get("character", "?")),
                str(info.get("source", "?")),
                str(what),
                preview if preview.is_file() else None,
            )
        )
    return entries, [f"{d.key}: {d.describe()}" for d in contents.damaged]


@dataclass(frozen=True)
class Reuse:
    """The character fields that find an identity again, or why it cannot be reused here."""

    id: str = ""
    description: str = ""
    class_word: str = ""
    photos: tuple[str, ...] = ()
    problem: str | None = None


def reuse_identity(info: dict[str, Any] | None, folders: AppFolders) -> Reuse:
    """What a character needs to be drawn with the identity whose ``info.json`` is ``info``."""
    if info is None:
        return Reuse(problem="the identity is no longer in the library (removed or damaged)")
    character = re.sub(r"[^A-Za-z0-9_\-]", "_", str(info.get("character") or "hero")) or "hero"
    if not re.match(r"[A-Za-z_]", character):
        character = f"c_{character}"
    if info.get("source") == "photos":
        photos = tuple(str(p) for p in info.get("photos", []))
        if not photos or not all(folders.is_upload(p) for p in photos):
            return Reuse(
                problem="its photos are not files uploaded to this app; upload the same photos to the character "
                "(the same photos find the same identity)"
            )
        return Reuse(id=character, photos=photos)
    prompt = str(info.get("prompt") or "")
    words = prompt.split()
    if TRIGGER_WORD not in words or words.index(TRIGGER_WORD) == 0:
        return Reuse(problem=f"its search prompt {prompt!r} does not hold the trigger word after a class word")
    class_word = re.sub(r"\W+$", "", words[words.index(TRIGGER_WORD) - 1])
    return Reuse(id=character, description=remove_trigger_word(prompt), class_word=class_word)
