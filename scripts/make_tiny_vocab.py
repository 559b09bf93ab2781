"""Regenerate the tiny CLIP-style BPE vocabulary shipped in ``storycast/models/tiny_tokenizer``.

The tiny preset needs a tokenizer that works offline and splits story prompts into few tokens, so
that a 77-token context holds a whole benchmark prompt. We learn byte-level BPE merges (the CLIP
format: ``vocab.json`` + ``merges.txt``, end-of-word marker ``</w>``) from the benchmark prompts and
the example stories. The output is deterministic: run this script twice and the files are equal.

Usage: python scripts/make_tiny_vocab.py [--merges 1400]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "storycast" / "models" / "tiny_tokenizer"
CORPUS_GLOBS = [
    (ROOT.parent / "shared" / "bench", "**/*.json"),
    (ROOT / "examples", "*.yaml"),
    (ROOT / "tests", "**/*.yaml"),
]
# The same split CLIP uses before BPE: contractions, letters, single digits, other symbols.
WORD_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable character table (printable bytes map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def corpus_words() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    byte_chars = bytes_to_unicode()
    for folder, pattern in CORPUS_GLOBS:
        for path in sorted(folder.glob(pattern)):
            text = path.read_text(encoding="utf-8").lower()
            for word in WORD_PATTERN.findall(text):
                counts["".join(byte_chars[b] for b in word.encode("utf-8"))] += 1
    # Words every story prompt uses, so they stay single tokens even in a tiny corpus.
    for word in [
        "a",
        "an",
        "the",
        "of",
        "and",
        "with",
        "in",
        "on",
        "at",
        "img",
        "woman",
        "man",
        "girl",
        "boy",
        "person",
        "photo",
        "illustration",
    ]:
        counts[word] += 1000
    return counts


def learn_merges(words: collections.Counter[str], num_merges: int) -> list[tuple[str, str]]:
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, parts in splits.items():
            for left, right in itertools.pairwise(parts):
                pairs[(left, right)] += words[word]
        if not pairs:
            break
        # Highest count first; ties broken by the pair itself so the result is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        for word, parts in splits.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merges", type=int, default=1400, help="number of BPE merges to learn")
    options = parser.parse_args()

    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = learn_merges(corpus_words(), options.merges)
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (OUT_DIR / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT_DIR}")


if __name__ == "__main__":
    main()
