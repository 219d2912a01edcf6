"""Tokenizer loading (tokenizer.json, or vocab.json + merges.txt) and the transformers-like calls chat uses."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from internvl.errors import CheckpointError
from internvl.processing.tokenizer import _QWEN_SPLIT, INTERNVL_SPECIAL_TOKENS, Tokenizer, byte_tokenizer

TEXT = ["The red circle is left of the blue square.", "How many triangles are there? 3!", "中文 also works."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small Qwen-style byte-level BPE saved both as tokenizer.json and as vocab.json + merges.txt."""
    from tokenizers import Regex
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 50, trainers.BpeTrainer(vocab_size=400, initial_alphabet=
                                                           pre_tokenizers.ByteLevel.alphabet(),
                                                           special_tokens=list(INTERNVL_SPECIAL_TOKENS)))
    a = tmp_path_factory.mktemp("json")
    tok.save(str(a / "tokenizer.json"))
    (a / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    b = tmp_path_factory.mktemp("vocab")
    tok.model.save(str(b))
    added = {str(tok.token_to_id(t)): {"content": t, "special": True} for t in INTERNVL_SPECIAL_TOKENS}
    (b / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "added_tokens_decoder": added}))
    return a, b


def test_vocab_merges_equals_tokenizer_json(trained):
    a, b = (Tokenizer.from_pretrained(p) for p in trained)
    for text in TEXT + ["<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>x<|im_end|>"]:
        assert a.encode(text) == b.encode(text)
        assert a.decode(a.encode(text)) == text
    assert a.convert_tokens_to_ids("<IMG_CONTEXT>") == b.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert a.eos_token_id == b.eos_token_id == a.convert_tokens_to_ids("<|im_end|>")


def test_padding_sides_and_skip_special():
    tok = byte_tokenizer()
    tok.padding_side = "left"
    out = tok(["ab", "abcd"])
    assert out["input_ids"].shape == (2, 4)
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out["input_ids"][0, 0] == tok.pad_token_id
    tok.padding_side = "right"
    assert tok(["ab", "abcd"])["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    ids = tok.encode("<img>é</img>")
    assert tok.decode(ids, skip_special_tokens=True) == "é"
    assert tok.batch_decode(torch.tensor([ids]))[0] == "<img>é</img>"
    with pytest.raises(KeyError, match="<nope>"):
        tok.convert_tokens_to_ids("<nope>")


def test_missing_or_sentencepiece_only(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)
