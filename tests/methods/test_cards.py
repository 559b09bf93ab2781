"""Which methods run on which families, said plainly and the same everywhere: each built-in method's card, its
docs page and the README's table of methods agree with the method classes."""

from __future__ import annotations

import dataclasses

import pytest

from storycast.cli.main import main
from storycast.methods.card import FAMILY_LABELS, methods_table
from storycast.methods.registry import builtin_methods, get_method
from tests.helpers import REPO_ROOT

PAGES = {name: REPO_ROOT / "docs" / "methods" / f"{name}.md" for name in builtin_methods() if name != "vanilla"}


@pytest.mark.parametrize("name", builtin_methods())
def test_every_builtin_method_has_a_complete_card(name):
    card = get_method(name).card
    assert card is not None, f"{name} has no MethodCard"
    empty = [field.name for field in dataclasses.fields(card) if not getattr(card, field.name).strip()]
    assert not empty, f"{name}'s card leaves {empty} empty"


def test_the_readme_table_is_the_registry_s():
    table = methods_table(get_method(name) for name in builtin_methods())
    assert table in (REPO_ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md's table of methods differs from the methods' cards: paste `storycast methods --table` into it"
    )


@pytest.mark.parametrize("name", sorted(PAGES))
def test_each_method_page_says_which_families_and_why(name):
    text = PAGES[name].read_text(encoding="utf-8")
    assert "## What works on which family" in text
    section = text.split("## What works on which family", 1)[1].split("\n## ", 1)[0]
    # Every family is named on the page, the method's own and the refused ones alike (with the reason).
    for label in FAMILY_LABELS.values():
        assert label in section, f"{PAGES[name].name} does not say what happens on {label}"


def test_the_cli_prints_the_card_and_the_table(capsys):
    assert main(["methods", "consistory"]) == 0
    out = capsys.readouterr().out
    assert "families:" in out and "DIFT" in out and "NVlabs/consistory" in out
    assert main(["methods", "--table"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| method | families |")
    assert "| `storydiffusion` | SDXL, SD 1.5, FLUX.1 |" in table
