"""The identity library in the app: listed with previews; an identity given to a new character by its key."""

from __future__ import annotations

import torch
from PIL import Image

from storycast.app.folders import AppFolders
from storycast.app.identities import list_identities, reuse_identity
from storycast.identity.library import IdentityLibrary, identity_key
from storycast.identity.photomaker_prompt import insert_trigger_word
from storycast.methods.identitystory.prompts import search_prompt
from storycast.story.model import Character


def test_the_library_is_listed_with_previews(tmp_path):
    library = IdentityLibrary(tmp_path / "identities")
    key = identity_key({"prompt": "x"})
    library.put(key, torch.ones(8), {"character": "mara", "source": "discovered", "prompt": "a woman img"},
                preview=Image.new("RGB", (8, 8)))  # fmt: skip
    other = identity_key({"prompt": "y"})
    library.put(other, torch.ones(8), {"character": "leo", "source": "photos", "photos": ["/a/leo1.png"]})
    (library.path(other) / "info.json").write_text("{broken", encoding="utf-8")
    entries, damaged = list_identities(library)
    assert [(e.key, e.character, e.what) for e in entries] == [(key, "mara", "a woman img")]
    assert entries[0].preview is not None and entries[0].preview.is_file()
    assert len(damaged) == 1 and damaged[0].startswith(other)


def test_a_discovered_identity_is_named_by_its_key_with_the_description_it_was_made_for(tmp_path):
    folders = AppFolders.create(tmp_path)
    character = Character("mara", "an old woman with short silver hair, a yellow raincoat", "woman")
    info = {"character": "mara", "source": "discovered", "prompt": search_prompt(character)}
    reuse = reuse_identity("k1", info, folders)
    assert reuse.problem is None and reuse.identity == "k1"
    assert (reuse.id, reuse.description, reuse.class_word) == ("mara", character.description, "woman")
    assert insert_trigger_word(reuse.description, reuse.class_word) == info["prompt"]


def test_photo_identities_are_named_by_their_key_alone(tmp_path):
    folders = AppFolders.create(tmp_path / "app")
    reuse = reuse_identity("k2", {"character": "leo", "source": "photos", "photos": ["/etc/passwd"]}, folders)
    assert reuse.problem is None and (reuse.id, reuse.identity, reuse.description) == ("leo", "k2", "")
    assert reuse_identity("k3", None, folders).problem
    assert reuse_identity(
        "k4", {"character": "9 lives", "source": "discovered", "prompt": "a cat img"}, folders
    ).id == ("c_9_lives")


def test_a_character_naming_a_discovered_identity_is_drawn_with_it(tmp_path, caplog):
    """End to end on the tiny model: identitystory discovers Mara's identity; a new character of another story,
    with another description, names that library entry and is drawn with it (nothing discovered again)."""
    from storycast.app.drawing import Drawer
    from storycast.app.story_form import CharacterFields, StoryFields, build_document, check_document
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    folders = AppFolders.create(tmp_path / "app")
    drawer = Drawer(folders, cache_dir=tmp_path / "cache", device="cpu")
    drawer.keep(load_models(ModelSpec(source="tiny", device="cpu")))  # its own: identitystory attaches PhotoMaker
    library = IdentityLibrary(tmp_path / "cache" / "identities")

    def draw(title: str, character: CharacterFields, text: str) -> None:
        fields = StoryFields(
            title=title, characters=[character], frames=text, settings={"width": "64", "height": "64", "steps": "2"}
        )
        *_, done = drawer.draw(check_document(build_document(fields), folders), "identitystory", "tiny")
        assert done.finished and not done.failed, done.status

    draw(
        "First",
        CharacterFields(id="mara", description="a young woman with red hair", class_word="woman"),
        "{mara} reading",
    )
    (key,) = library.keys()
    reuse = reuse_identity(key, library.info(key), folders)
    caplog.set_level("INFO", logger="storycast")
    draw(
        "Second",
        CharacterFields(id="zoe", description="a tall man with a hat", class_word="man", identity=reuse.identity),
        "{zoe} swimming",
    )
    assert library.keys() == [key]
    assert f"identity of 'zoe' taken from the library entry it names ({key})" in caplog.text
    assert "discovering" not in caplog.text
