"""Test helpers shared across test modules (paths, small story documents)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
BENCH = REPO_ROOT.parent / "shared" / "bench" / "ConsiStory-Human"


def raised_by_storycast(filename: str) -> bool:
    """Whether a warning's ``filename`` is a file of storycast's own package (the installed or the cloned one),
    judged by folder: a clone named "storycast" holding its virtual environment puts every library's files under a
    path that contains the name."""
    import storycast

    package = Path(storycast.__file__).resolve().parent
    return Path(filename).resolve().is_relative_to(package)


def small_story_data(frames: int = 4) -> dict:
    """A valid story document with one character and ``frames`` frames."""
    return {
        "title": "Test story",
        "style": "A photo of",
        "characters": [{"id": "mara", "description": "a young woman with red hair", "class_word": "woman"}],
        "frames": [{"text": f"{{mara}} in scene number {i}"} for i in range(frames)],
        "settings": {"steps": 2, "seed": 3},
    }


try:
    import pytest

    needs_shared_bench = pytest.mark.skipif(
        not BENCH.is_dir(),
        reason=f"the shared ConsiStory-Human copy ({BENCH}) is not beside this clone; these tests check those files",
    )
except ImportError:  # pragma: no cover - helpers imported outside pytest
    needs_shared_bench = None

BENCH_PEOPLE = {
    "single": [("woman", "young woman with long, wavy red hair and freckled skin")],
    "multi-2": [
        ("boy", "young Middle Eastern boy with short, curly black hair and light brown skin"),
        ("girl", "young South Asian girl with long, wavy black hair and tan skin"),
    ],
}
BENCH_SETTINGS = [
    ("playing video games on a shared screen", "action"),
    ("painting abstract art on a large canvas", "background"),
    ("studying books under a desk lamp", "action"),
    ("discussing blueprints over a drafting table", "background"),
    ("mixing paint colors on a palette", "action"),
]


def benchmark_document(kind: str = "multi-2", frames: int = 5) -> dict:
    """A story in the ConsiStory-Human layout (the authors' bench/ files: prompts, token, character,
    settings_types, settings, style), written here so that tests need no ../shared."""
    people = BENCH_PEOPLE[kind]
    style = "A close-up photo of"
    settings = [BENCH_SETTINGS[i % len(BENCH_SETTINGS)] for i in range(frames)]
    descriptions = ", ".join(description for _, description in people)
    return {
        "prompts": [f"{style} {descriptions}, {setting}" for setting, _ in settings],
        "token": [token for token, _ in people],
        "character": [description for _, description in people],
        "settings_types": [kind_ for _, kind_ in settings],
        "settings": [setting for setting, _ in settings],
        "style": style,
    }


def write_benchmark_file(path: Path, kind: str = "multi-2", frames: int = 5) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(benchmark_document(kind, frames), indent=4) + "\n", encoding="utf-8")
    return path


def flux_transformer_inputs(transformer, rows: int = 2, text: int = 7, grid: tuple[int, int] = (4, 6)) -> dict:
    """Random inputs of one call of a (tiny) FLUX transformer: ``rows`` rows of a ``grid`` of image tokens and
    ``text`` text tokens, timesteps 0.7 and 0.4, embedded guidance 3.5, FluxPipeline's positions."""
    import torch

    from storycast.pipelines.families.flux import image_positions

    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    return {
        "hidden_states": torch.randn(rows, grid[0] * grid[1], config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(rows, text, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(rows, config.pooled_projection_dim, generator=generator),
        "timestep": torch.linspace(0.7, 0.4, rows),
        "guidance": torch.full([rows], 3.5),
        "img_ids": image_positions(*grid),
        "txt_ids": torch.zeros(text, 3),
    }
