"""The tiny model's BPE: deterministic files, loadable by the package tokenizer, lossless on any text, special
tokens as single ids, compact on the world's prompts, and within the tiny preset's vocabulary."""

from __future__ import annotations

import pytest

from internvl.presets import PRESETS
from internvl.processing.prompt import build_query
from internvl.processing.templates import get_template
from internvl.processing.tokenizer import INTERNVL_SPECIAL_TOKENS, Tokenizer
from internvl.tiny import tokenizer as tiny_tokenizer
from internvl.tiny.world import answer_texts, make_example, question_texts


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return tiny_tokenizer.save_tokenizer(tmp_path_factory.mktemp("tok"))


def test_training_is_deterministic(saved, tmp_path):
    again = tiny_tokenizer.save_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (saved / name).read_bytes()


def test_loads_with_the_package_tokenizer_and_fits_the_preset(saved):
    tok = Tokenizer.from_pretrained(saved)
    cfg = PRESETS["tiny"].config
    assert 300 < tok.vocab_size <= cfg.llm.vocab_size
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == cfg.image_token_id
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == cfg.llm.eos_token_id
    assert tok.pad_token_id == cfg.llm.pad_token_id


@pytest.mark.parametrize("text", [
    "How many circles are there?", "Image-1: <image>\nImage-2: <image>\nWhich image has more squares?",
    "  leading and trailing spaces  \n\ttabs", "Zebra 12345 ünïcödé 中文 emoji 😀 \x00\x7f", "",
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat?<|im_end|>\n"])
def test_round_trips_any_text(saved, text):
    tok = Tokenizer.from_pretrained(saved)
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids(saved):
    tok = Tokenizer.from_pretrained(saved)
    for i, special in enumerate(INTERNVL_SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(special) == i
        assert tok.encode(f"x{special}y") == tok.encode("x") + [i] + tok.encode("y")
    # decoding can drop them, as chat does for answers
    assert tok.decode(tok.encode("3<|im_end|>"), skip_special_tokens=True) == "3"


def test_world_text_is_compact(saved):
    """Every question word and answer is one token; a whole single-image prompt (system message included)
    stays short, which is what makes training on two CPU cores affordable."""
    tok = Tokenizer.from_pretrained(saved)
    for answer in answer_texts():
        assert len(tok.encode(answer)) == 1, answer
    for question in question_texts():
        words = question.replace("<image>", "").replace("?", " ?").split()
        assert len(tok.encode(question.replace("<image>", ""))) <= 2 * len(words) + 2
    example = make_example(3)
    query = build_query(get_template("internvl2_5"), example.prompt, None, [1], 0)  # text tokens only
    assert len(tok.encode(query)) <= 40, len(tok.encode(query))


def test_a_shape_plural_is_its_singular_plus_s(saved):
    """"How many circles" must hold the " circle" token that stage 0 aligns with circles in images, so the
    plural is the singular token followed by "s", in a count question and in a compare question alike."""
    tok = Tokenizer.from_pretrained(saved)
    for shape in ("circle", "square", "triangle"):
        singular, s = tok.encode(f" {shape}"), tok.encode("s")
        assert len(singular) == 1
        assert tok.encode(f"How many {shape}s are there?")[2:4] == singular + s
        assert tok.encode(f"Which image has more {shape}s?")[-3:-1] == singular + s
    # words that merely end in a shape name followed by "s" elsewhere are left to BPE as they come
    assert tok.decode(tok.encode("circlesque squares")) == "circlesque squares"
