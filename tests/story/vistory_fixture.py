"""A ViStory-format folder we make (the benchmark's layout): two stories, characters human and not, reference
images, shots with zero, one and two characters, English and Chinese."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def _shot(index: int, names_en: list[str], names_ch: list[str], place: str) -> dict:
    return {
        "index": index,
        "Setting Description": {"en": f"a {place}", "ch": f"{place}场景"},
        "Plot Correspondence": {"en": f"plot {index}", "ch": f"情节{index}"},
        "Characters Appearing": {"en": names_en, "ch": names_ch},
        "Static Shot Description": {"en": f"script {index}", "ch": f"脚本{index}"},
        "Shot Perspective Design": {"en": "medium shot", "ch": "中景"},
    }


STORIES = {
    "01": {
        "Story_type": {"en": "fairy tale", "ch": "童话"},
        "Characters": {
            "Mara": {"name_en": "Mara", "name_ch": "玛拉", "prompt_en": "a young woman with red hair",
                     "prompt_ch": "红发年轻女子", "tag": "realistic_human", "num_of_appearances": 2},
            "Pip": {"name_en": "Pip", "name_ch": "皮普", "prompt_en": "a small green dragon with wings",
                    "prompt_ch": "绿色小龙", "tag": "non_human", "num_of_appearances": 2},
            "Old Tom": {"name_en": "Old Tom", "name_ch": "老汤姆", "prompt_en": "an elderly sailor in a blue coat",
                        "prompt_ch": "穿蓝外套的老水手", "tag": "unrealistic_human", "num_of_appearances": 1},
        },
        "Shots": [
            _shot(1, ["Mara"], ["玛拉"], "beach"),
            _shot(2, ["Mara", "Pip"], ["玛拉", "皮普"], "cave"),
            _shot(3, [], [], "stormy sea"),
            _shot(4, ["Old Tom", "Pip"], ["老汤姆", "皮普"], "harbour"),
        ],
    },
    "02": {
        "Story_type": {"en": "fable", "ch": "寓言"},
        "Characters": {
            "Fox": {"name_en": "Fox", "name_ch": "狐狸", "prompt_en": "a clever red fox", "prompt_ch": "聪明的红狐狸",
                    "tag": "non_human", "num_of_appearances": 2},
        },
        "Shots": [_shot(1, ["Fox"], ["狐狸"], "forest"), _shot(2, ["Fox"], ["狐狸"], "river")],
    },
}  # fmt: skip


LONG_SCRIPT = " ".join(["the wind bends the tall grass over the old stone wall"] * 6)
"""A shot description long enough to push the characters after it past CLIP's 77 tokens."""

MIXED = {
    "03": {
        "Story_type": {"en": "adventure", "ch": "冒险"},
        "Characters": {
            "Ava": {"name_en": "Ava", "name_ch": "艾娃", "prompt_en": "a tall woman in a green cloak",
                    "prompt_ch": "穿绿斗篷的高个女人", "tag": "realistic_human", "num_of_appearances": 3},
            "Bo": {"name_en": "Bo", "name_ch": "波", "prompt_en": "a small boy with a kite", "prompt_ch": "拿风筝的小男孩",
                   "tag": "realistic_human", "num_of_appearances": 2},
            "Rex": {"name_en": "Rex", "name_ch": "雷克斯", "prompt_en": "a shaggy brown dog", "prompt_ch": "棕色长毛狗",
                    "tag": "non_human", "num_of_appearances": 3},
        },
        "Shots": [
            _shot(1, ["Ava"], ["艾娃"], "meadow"),
            _shot(2, [], [], "empty road"),
            _shot(3, ["Ava", "Bo", "Rex"], ["艾娃", "波", "雷克斯"], "village square"),
            _shot(4, ["Rex"], ["雷克斯"], "barn"),
            _shot(5, ["Ava", "Bo", "Rex"], ["艾娃", "波", "雷克斯"], "hill") | {
                "Static Shot Description": {"en": LONG_SCRIPT, "ch": "风吹草地"}},
        ],
    },
}  # fmt: skip
"""One story of shots with 0, 1 and 3 characters, a non-human character, characters who appear alone once or
never (Bo), and a shot (the fifth) whose characters come after CLIP's 77 tokens."""


def write_vistory(root: Path, stories: dict | None = None) -> Path:
    """The stories under ``root`` (``root/01/story.json``, ``root/01/image/<character>/00.png``...); default
    :data:`STORIES`."""
    for name, story in (STORIES if stories is None else stories).items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "story.json").write_text(json.dumps(story, ensure_ascii=False, indent=2), encoding="utf-8-sig")
        for number, key in enumerate(story["Characters"]):
            images = folder / "image" / key
            images.mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (32, 32), (40 * number, 80 + k, 120)).save(images / f"{k:02d}.png")
    return root
