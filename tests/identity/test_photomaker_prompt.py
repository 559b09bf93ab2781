from pathlib import Path

import pytest

from storycast.identity.photomaker_prompt import (
    expand_class_tokens,
    find_class_tokens,
    insert_trigger_word,
    remove_trigger_word,
)

TINY_TOKENIZER = Path(__file__).parents[2] / "src" / "storycast" / "models" / "tiny_tokenizer"
BOS, EOS, TRIGGER, PAD = 100, 101, 7, 0


@pytest.mark.parametrize(
    ("description", "class_word", "expected"),
    [
        ("young Asian woman with long hair", "woman", "young Asian woman img with long hair"),
        ("A Woman, smiling; another woman", "woman", "A Woman img, smiling; another woman"),
        ("a businesswoman in a suit", "woman", "a businesswoman in a suit woman img"),
        ("an old fisherman", "man", "an old fisherman man img"),
    ],
)
def test_insert_trigger_word(description, class_word, expected):
    assert insert_trigger_word(description, class_word) == expected


def test_remove_trigger_word_keeps_other_words():
    assert remove_trigger_word("a young woman img with an imgur logo") == "a young woman with an imgur logo"
    assert remove_trigger_word("a man img") == "a man"


def test_find_class_tokens_drops_the_trigger_and_points_at_the_word_before():
    ids = [BOS, 11, 12, 13, TRIGGER, 14, EOS]
    found = find_class_tokens(ids, TRIGGER, max_length=10, pad_token_id=PAD, bos_token_id=BOS)
    assert found.input_ids == [BOS, 11, 12, 13, 14, EOS, PAD, PAD, PAD, PAD]
    assert found.positions == [3]


def test_find_class_tokens_repeats_the_class_token():
    found = find_class_tokens([BOS, 11, 13, TRIGGER, 14, EOS], TRIGGER, repeats=2)
    assert found.input_ids == [BOS, 11, 13, 13, 14, EOS]
    assert found.positions == [2, 3]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([BOS, 11, 12, EOS], "exactly once, found it 0"),
        ([BOS, 11, TRIGGER, 12, TRIGGER, EOS], "exactly once, found it 2"),
        ([BOS, TRIGGER, 11, EOS], "must follow the class word"),
        ([TRIGGER, 11], "must follow the class word"),
    ],
)
def test_find_class_tokens_errors(ids, message):
    with pytest.raises(ValueError, match=message):
        find_class_tokens(ids, TRIGGER, bos_token_id=BOS)


def test_find_class_tokens_class_beyond_max_length():
    with pytest.raises(ValueError, match="beyond max_length"):
        find_class_tokens([BOS, 11, 12, 13, TRIGGER, EOS], TRIGGER, max_length=3, pad_token_id=PAD)


def test_with_a_clip_tokenizer_and_the_trigger_as_special_token():
    if not TINY_TOKENIZER.is_dir():
        pytest.skip("the tiny test tokenizer is not in this checkout")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(TINY_TOKENIZER))
    tokenizer.add_tokens(["img"], special_tokens=True)
    trigger = tokenizer.convert_tokens_to_ids("img")
    prompt = insert_trigger_word("a young woman with long hair", "woman")
    ids = tokenizer(prompt).input_ids
    found = find_class_tokens(
        ids, trigger, max_length=77, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    clean = tokenizer(remove_trigger_word(prompt), padding="max_length", max_length=77).input_ids
    assert found.input_ids == clean
    up_to_class = tokenizer("a young woman").input_ids[:-1]  # without EOS
    assert found.positions == [len(up_to_class) - 1]


@pytest.mark.parametrize("repeats", [1, 2, 4])
def test_expand_class_tokens_of_one_class_word_is_the_official_repeat(repeats):
    """PhotoMaker v2 repeats the class token num_images x num_tokens times: find_class_tokens(repeats=...)."""
    with_trigger = [BOS, 11, 12, 13, TRIGGER, 14, EOS]
    official = find_class_tokens(with_trigger, TRIGGER, repeats=repeats, max_length=12, pad_token_id=PAD)
    expanded = expand_class_tokens([BOS, 11, 12, 13, 14, EOS], [3], [repeats], max_length=12, pad_token_id=PAD)
    assert expanded.input_ids == official.input_ids
    assert expanded.positions == [official.positions]


def test_expand_class_tokens_of_several_characters_keeps_their_order():
    ids = [BOS, 11, 21, 12, 22, 13, EOS]  # 21 and 22: two characters' class tokens
    expanded = expand_class_tokens(ids, [4, 2], [2, 4])  # given out of order
    assert expanded.input_ids == [BOS, 11, 21, 21, 21, 21, 12, 22, 22, 13, EOS]
    assert expanded.positions == [[7, 8], [2, 3, 4, 5]]
    truncated = expand_class_tokens(ids, [2], [6], max_length=10)
    assert truncated.input_ids == [BOS, 11, *[21] * 6, 12, 22]  # cut to the length, as the official code cuts


@pytest.mark.parametrize(
    ("positions", "repeats", "message"),
    [
        ([2, 2], [2, 2], "share a class token"),
        ([9], [2], "indices into the 5 ids"),
        ([2], [0], "integers >= 1"),
        ([2, 3], [2], "2 class positions but 1 repeat"),
        ([3], [4], "reach position 6, beyond max_length=6"),
    ],
)
def test_expand_class_tokens_errors(positions, repeats, message):
    with pytest.raises(ValueError, match=message):
        expand_class_tokens([BOS, 11, 12, 13, EOS], positions, repeats, max_length=6, pad_token_id=PAD)
