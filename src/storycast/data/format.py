"""StoryDB-style data sets: character sets as Hugging Face ``datasets`` parquet shards, with a card.

One row is one **character set**: images that show the same character(s) (a person across a film, a series of
photos), each with its caption, the ids of the characters it shows and one mask per such character. A set
with one character is a single-character set; images showing two characters together form a set of their
own. The folder is what the Hub and ``datasets`` read as is:

    DATA/
      README.md                         the data-set card (YAML header, counts, how it was built, sources)
      storycast_data.json               our manifest: format version, counts, the build settings
      data/train-00000-of-00004.parquet the rows, sharded (``load_dataset(DATA, streaming=True)`` streams them)
      contact_sheets/<set>.png          a sheet per set for a person to check

Readers open it with :func:`open_dataset` (``datasets``, map-style or streaming) or :class:`ShardedSets`: random
access to one set at a time straight from the shards (each set is its own parquet row group), so every
process of a many-node run reads only the sets it trains on, from a shared folder, and nothing is copied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storycast.errors import StorycastError

FORMAT = "storycast.character-sets"
FORMAT_VERSION = 1
MANIFEST_FILE = "storycast_data.json"
CARD_FILE = "README.md"
SHARD_PATTERN = "data/train-{index:05d}-of-{count:05d}.parquet"
SETS_PER_SHARD = 256


class DataSetError(StorycastError):
    """A data set folder is missing, incomplete or of another format."""


def features() -> Any:
    """The ``datasets.Features`` of a row."""
    from storycast.utils.imports import require

    require("datasets", extra="data", purpose="training data sets")
    from datasets import Features, Image, List, Value

    return Features(
        {
            "set_id": Value("string"),
            "characters": List({"id": Value("string"), "class_word": Value("string")}),
            "images": List(Image()),
            "captions": List(Value("string")),
            "image_characters": List(List(Value("string"))),
            "masks": List(List(Image())),
            "sources": List(Value("string")),
        }
    )


@dataclass
class CharacterSet:
    """One row: images of the same character(s).

    Attributes:
        set_id: Unique name ("mara", "mara+tom").
        characters: (id, class word) of every character the set shows.
        images: PIL images.
        captions: One per image; each holds the class word of every character the image shows.
        image_characters: Per image, the ids of the characters it shows.
        masks: Per image, one boolean-like PIL mask ("L", 255 = character) per character it shows, in order.
        sources: Per image, where it came from (a path relative to the source folder, "#frame" for videos).
    """

    set_id: str
    characters: list[tuple[str, str]]
    images: list[Any]
    captions: list[str]
    image_characters: list[list[str]]
    masks: list[list[Any]]
    sources: list[str]

    def row(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "characters": [{"id": c, "class_word": w} for c, w in self.characters],
            "images": self.images,
            "captions": self.captions,
            "image_characters": self.image_characters,
            "masks": self.masks,
            "sources": self.sources,
        }


@dataclass
class DataSetInfo:
    """What the manifest and the card say about a data set."""

    sets: int = 0
    images: int = 0
    characters: int = 0
    multi_character_sets: int = 0
    source: str = ""
    built_with: Mapping[str, Any] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}


def write_dataset(sets: Sequence[Callable[[], CharacterSet]], folder: Path, info: DataSetInfo) -> None:
    """Write the character sets that ``sets`` make, one at a time, as parquet shards (one row group per set),
    the manifest and the card into ``folder`` (an existing, empty staging folder: the caller renames it into
    place, so a half-written data set never replaces a good one). Only one set's images are in memory at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features()
    count = max(1, math.ceil(len(sets) / SETS_PER_SHARD))
    for index in range(count):
        path = folder / SHARD_PATTERN.format(index=index, count=count)
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(str(path), schema.arrow_schema) as writer:
            for make in sets[index * SETS_PER_SHARD : (index + 1) * SETS_PER_SHARD]:
                row = schema.encode_example(make().row())
                writer.write_table(pa.Table.from_pylist([row], schema=schema.arrow_schema))
    (folder / MANIFEST_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
    (folder / CARD_FILE).write_text(dataset_card(info))


def dataset_card(info: DataSetInfo) -> str:
    """The data-set card: YAML header (what the Hub reads) and the counts, the build and the sources."""
    settings = "\n".join(f"- `{key}`: {value}" for key, value in sorted(info.built_with.items()))
    dropped = "\n".join(f"- {reason}: {count}" for reason, count in sorted(info.dropped.items())) or "- none"
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
tags:
- storycast
- character-sets
---

# Character sets (StoryDB-style)

Built by `storycast data build` from `{info.source}`.

| | count |
|---|---|
| character sets | {info.sets} |
| of which multi-character | {info.multi_character_sets} |
| images | {info.images} |
| characters | {info.characters} |

Each row is a set of images of the same character(s), each image with a caption that names every character
it shows by its class word, and one mask per character. Read it with
`datasets.load_dataset("<this folder>", split="train")` (add `streaming=True` to stream the shards).

## How it was built

{settings}

## Images left out

{dropped}

## Sources

The images come from `{info.source}`; their licences are those of that source. Check the contact sheets in
`contact_sheets/` before training.
"""


def open_dataset(folder: str | Path, *, streaming: bool = False) -> Any:
    """The ``datasets`` data set of a folder written by ``storycast data build`` (map-style, or streaming).

    Raises:
        DataSetError: The folder is missing, has no shards, or holds another format; the message names the
            folder and the fix.
    """
    from datasets import load_dataset

    folder = Path(folder).expanduser()
    shards = _check_folder(folder)
    dataset = load_dataset("parquet", data_files=[str(s) for s in shards], split="train", streaming=streaming)
    missing = set(features()) - set(dataset.features or {})
    if missing:
        raise DataSetError(f"'{folder}': the shards lack the columns {sorted(missing)}. Fix: build it again.")
    return dataset


def _check_folder(folder: Path) -> list[Path]:
    """The shards of a data set folder, after checking it is one (errors name the folder and the fix)."""
    manifest = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataSetError(
            f"data set folder '{folder}' does not exist. Fix: build one with `storycast data build SRC --out "
            f"{folder}`, or pass the folder it was written to."
        )
    if not manifest.is_file():
        raise DataSetError(
            f"'{folder}' is not a storycast data set: it has no {MANIFEST_FILE}. Fix: pass the folder written by "
            f"`storycast data build`."
        )
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataSetError(f"{manifest} cannot be read ({err}). Fix: build the data set again.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataSetError(f"{manifest} is not a storycast character-set manifest (format {FORMAT!r}).")
    shards = sorted(folder.glob("data/train-*.parquet"))
    if not shards:
        raise DataSetError(f"'{folder}' has no data/train-*.parquet shards. Fix: build the data set again.")
    return shards


def iter_rows(dataset: Iterable[Mapping[str, Any]]) -> Iterable[CharacterSet]:
    """Rows of an opened data set as :class:`CharacterSet`."""
    for row in dataset:
        yield CharacterSet(
            row["set_id"],
            [(c["id"], c["class_word"]) for c in row["characters"]],
            list(row["images"]),
            list(row["captions"]),
            [list(c) for c in row["image_characters"]],
            [list(m) for m in row["masks"]],
            list(row["sources"]),
        )


class ShardedSets:
    """Random access to the character sets of a data set folder, one parquet row group (one set) at a time.

    Nothing is converted or cached: processes on many nodes read the shards from a shared folder, each only
    the sets it draws. Opening checks the folder as :func:`open_dataset` does.
    """

    def __init__(self, folder: str | Path):
        from storycast.utils.imports import require

        require("pyarrow", extra="data", purpose="reading data sets")
        import pyarrow.parquet as pq

        self.folder = Path(folder).expanduser()
        _check_folder(self.folder)
        self._files: list[Any] = []
        self._index: list[tuple[int, int]] = []
        for number, shard in enumerate(sorted(self.folder.glob("data/train-*.parquet"))):
            try:
                handle = pq.ParquetFile(shard)
            except (OSError, ValueError) as err:
                raise DataSetError(
                    f"{shard} is not a readable parquet shard ({err}). Fix: build the data set again."
                ) from None
            missing = set(features()) - set(handle.schema_arrow.names)
            if missing:
                raise DataSetError(f"{shard} lacks the columns {sorted(missing)}. Fix: build the data set again.")
            self._files.append(handle)
            self._index.extend((number, group) for group in range(handle.metadata.num_row_groups))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, position: int) -> CharacterSet:
        import io

        from PIL import Image

        number, group = self._index[position]
        rows = self._files[number].read_row_group(group).to_pylist()
        if len(rows) != 1:
            raise DataSetError(f"{self.folder}: a row group holds {len(rows)} sets, not one. Fix: build it again.")
        row = rows[0]

        def image(cell: Mapping[str, Any]) -> Any:
            opened = Image.open(io.BytesIO(cell["bytes"]))
            opened.load()
            return opened

        return CharacterSet(
            row["set_id"],
            [(c["id"], c["class_word"]) for c in row["characters"]],
            [image(cell) for cell in row["images"]],
            list(row["captions"]),
            [list(c) for c in row["image_characters"]],
            [[image(cell) for cell in masks] for masks in row["masks"]],
            list(row["sources"]),
        )

    def sizes(self) -> list[int]:
        """Images per set, read from the shards' ``captions`` column only (no image is decoded)."""
        out = []
        for handle in self._files:
            for group in range(handle.metadata.num_row_groups):
                out.append(len(handle.read_row_group(group, columns=["captions"]).column(0)[0]))
        return out
