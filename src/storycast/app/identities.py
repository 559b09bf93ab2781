"""The identity library as the app shows it, and an identity reused for a new character.

A character reuses a stored identity by naming its key (``characters[i].identity``): the methods that read
identities from the library (identitystory, photomaker) take that entry, whatever the character's description or
photos. For a *discovered* identity the app also fills in the description and class word its search prompt was
made of, so that the new character is described as the one it was discovered for.
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
    """The character fields that draw a character with a stored identity, or why it cannot be reused.

    ``identity`` is the library key the character names; ``description`` and ``class_word`` are filled in for a
    discovered identity (empty: keep what the form has).
    """

    id: str = ""
    identity: str = ""
    description: str = ""
    class_word: str = ""
    problem: str | None = None


def reuse_identity(key: str, info: dict[str, Any] | None, folders: AppFolders) -> Reuse:
    """What a character needs to be drawn with the identity stored under ``key`` (whose ``info.json`` is
    ``info``)."""
    if info is None:
        return Reuse(problem="the identity is no longer in the library (removed or damaged)")
    character = re.sub(r"[^A-Za-z0-9_\-]", "_", str(info.get("character") or "hero")) or "hero"
    if not re.match(r"[A-Za-z_]", character):
        character = f"c_{character}"
    prompt = str(info.get("prompt") or "")
    words = prompt.split()
    if info.get("source") == "photos" or TRIGGER_WORD not in words or words.index(TRIGGER_WORD) == 0:
        return Reuse(id=character, identity=key)  # the description stays the form's: the key carries the identity
    class_word = re.sub(r"\W+$", "", words[words.index(TRIGGER_WORD) - 1])
    return Reuse(id=character, identity=key, description=remove_trigger_word(prompt), class_word=class_word)
