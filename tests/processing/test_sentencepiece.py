"""SentencePiece `tokenizer.model` checkpoints: our protobuf reader and BPE conversion against the real library.

The oracle is `sentencepiece` itself: small BPE models are trained here (byte fallback, user-defined ChatML
markers) in three normalizer settings, and our `Tokenizer` must give the same ids and decoded text.
"""

from __future__ import annotations

import io
import json
import random
import re

import pytest

from internvl.errors import CheckpointError
from internvl.processing import sentencepiece as ours
from internvl.processing.tokenizer import Tokenizer

spm = pytest.importorskip("sentencepiece")

SYMBOLS = ("<|im_start|>", "<|im_end|>")
SYMBOL_RE = re.compile("(" + "|".join(re.escape(s) for s in SYMBOLS) + ")")
# settings of the trained models: sentencepiece's defaults (NFKC, extra whitespace removed), no dummy prefix and
# no normalization (InternLM2-style), and LLaMA-2's (the Phi-3 vocabulary)
VARIANTS = {
    "nmt_nfkc": {},
    "no_dummy_prefix": dict(add_dummy_prefix=False, normalization_rule_name="identity",
                            remove_extra_whitespaces=False, split_digits=True),
    "llama": dict(normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                  allow_whitespace_only_pieces=True),
}

EN = ("the quick brown fox jumps over a lazy dog image shows red circle left of blue square how many triangles "
      "are there answer question describe this picture please model token").split()
ZH = "图片中有一个红色的圆形在蓝色方块左边请描述这张图像回答问题模型你好世界中文"
PUNCT = ".,!?;:()[]{}\"'-_/@#%&*+=<>"
UNSEEN = ["Привет", "مرحبا", "नमस्ते", "こんにちは", "😀", "👍🏽", "👨‍👩‍👧", "ﬁne", "①", "Ω", "e\u0301", "𝔘𝔫𝔦",
          "Ünïcödé", "façade", "ｆｕｌｌ", "\u3000", "\u00a0", "龘", "▁", "\r\n", "\x7f", "ß"]
SPACES = [" "] * 12 + ["  ", "   ", "\t", "\n", "\n\n", ""]


def _line(r: random.Random, unseen: float) -> str:
    out = []
    for _ in range(r.randint(1, 14)):
        k = r.random()
        if k < unseen:
            out.append(r.choice(UNSEEN))
        elif k < 0.5:
            out.append(r.choice(EN).capitalize() if r.random() < 0.1 else r.choice(EN))
        elif k < 0.75:
            out.append("".join(r.choice(ZH) for _ in range(r.randint(1, 4))))
        elif k < 0.88:
            out.append(str(r.randint(0, 10 ** r.randint(1, 6))))
        else:
            out.append(r.choice(PUNCT))
        out.append(r.choice(SPACES))
    return "".join(out)


def _strings() -> list[str]:
    r = random.Random(1)
    edge = ["", " ", "   ", "\n", "a", " a", "a ", "  a  b  ", "\na\n", "x\t\ty", "  \n  ", "▁", "▁x", "a▁b ▁",
            " ▁x", "¨x a ¨", "\u00a0nbsp\u00a0", "tab\tend\t", "\r\nwin\r\n", "😀 emoji 🎉!", "中文 also works.",
            "I'm here", "1234567890", "…", "ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ"]
    generated = [(" " * r.randint(0, 2)) + _line(r, 0.15) + (" " * r.randint(0, 2)) for _ in range(320)]
    return edge + generated


STRINGS = _strings()
CHAT = ["<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n", "x <|im_end|> y", "<|im_end|>",
        " <|im_start|> ", "a<|im_end|>b", "图片<|im_end|>\n\n<|im_start|>system\n  describe  ", "<|im_start|><|im_end|>"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (checkpoint dir with tokenizer.model + tokenizer_config.json, sentencepiece processor)."""
    r = random.Random(0)
    corpus = [_line(r, 0.0) for _ in range(3000)] + ["<|im_start|>user\nhello<|im_end|>"] * 5
    out = {}
    for name, kw in VARIANTS.items():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, model_type="bpe",
                                       vocab_size=700, byte_fallback=True, user_defined_symbols=list(SYMBOLS),
                                       minloglevel=2, **kw)
        d = tmp_path_factory.mktemp(name)
        (d / "tokenizer.model").write_bytes(buf.getvalue())
        (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
        out[name] = d, spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return out


def _with_config(d, tmp_path, **cfg):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "tokenizer.model").write_bytes((d / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return Tokenizer.from_pretrained(tmp_path)


def _per_segment(sp, text: str) -> list[int]:
    """What transformers' slow InternLM2Tokenizer does: split on the added tokens, sp.encode each piece between."""
    return [i for part in SYMBOL_RE.split(text) if part
            for i in ([sp.piece_to_id(part)] if part in SYMBOLS else sp.encode(part))]


@pytest.mark.parametrize("name", VARIANTS)
def test_model_proto_fields(trained, name):
    d, sp = trained[name]
    m = ours.read_model(d / "tokenizer.model")
    assert m.model_type == ours.BPE and m.byte_fallback
    assert len(m.pieces) == sp.get_piece_size()
    assert (m.unk_id, m.bos_id, m.eos_id, m.pad_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
    kinds = {ours.UNKNOWN: sp.is_unknown, ours.CONTROL: sp.is_control, ours.BYTE: sp.is_byte, ours.UNUSED: sp.is_unused}
    for i, (piece, score, kind) in enumerate(m.pieces):
        assert piece == sp.id_to_piece(i) and score == sp.get_score(i)
        for k, check in kinds.items():
            assert check(i) == (kind == k)
    assert [p for p, _, k in m.pieces if k == ours.USER_DEFINED] == list(SYMBOLS)
    kw = VARIANTS[name]
    assert m.add_dummy_prefix == kw.get("add_dummy_prefix", True)
    assert m.remove_extra_whitespaces == kw.get("remove_extra_whitespaces", True)
    assert m.normalizer_name == kw.get("normalization_rule_name", "nmt_nfkc")
    assert bool(m.precompiled_charsmap) == (m.normalizer_name != "identity")


@pytest.mark.parametrize("name", VARIANTS)
def test_encode_decode_match_sentencepiece(trained, name):
    d, sp = trained[name]
    tok = Tokenizer.from_pretrained(d)
    assert len(STRINGS) >= 300
    fallback = 0
    for text in STRINGS:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids), text
        fallback += any(sp.is_byte(i) for i in ids)
    assert fallback > 20  # unseen characters went through byte fallback


@pytest.mark.parametrize("name", VARIANTS)
def test_added_tokens_split_the_text_first(trained, name):
    d, sp = trained[name]
    tok = Tokenizer.from_pretrained(d)
    for text in CHAT + [s + "<|im_end|>" + t for s, t in zip(STRINGS[::7], STRINGS[1::7])]:
        ids = tok.encode(text)
        assert ids == _per_segment(sp, text), text
        assert tok.decode(ids) == sp.decode(ids), text
        if name == "no_dummy_prefix":  # without a dummy prefix the segments change nothing
            assert ids == sp.encode(text), text


@pytest.mark.parametrize("name", VARIANTS)
def test_legacy_false_prefixes_only_the_start(trained, name, tmp_path):
    """tokenizer_config legacy=false: sentencepiece on the whole string, but for transformers' Metaspace rule."""
    d, sp = trained[name]
    tok = _with_config(d, tmp_path, legacy=False, add_bos_token=False)
    kw = VARIANTS[name]
    dummy, strip = kw.get("add_dummy_prefix", True), kw.get("remove_extra_whitespaces", True)
    for text in STRINGS + (CHAT if not strip else []):
        expected = sp.encode(text)
        if dummy and (text.startswith("▁") or (text.startswith(" ") and not strip)):
            # the leading space stands in for the dummy prefix
            expected = sp.encode(text[1:]) if text[1:] or strip else [sp.piece_to_id("▁")]
        elif dummy and text.startswith(SYMBOLS):
            expected = expected[1:]  # no lone "▁" before a leading added token
        assert tok.encode(text) == expected, text


def test_add_bos_token_and_config_added_tokens(trained, tmp_path):
    d, sp = trained["llama"]
    n = sp.get_piece_size()
    added = {"0": "<unk>", "1": "<s>", "2": "</s>", str(sp.piece_to_id("<|im_end|>")): "<|im_end|>",
             str(n): "<img>", str(n + 1): "<IMG_CONTEXT>", str(n + 2): "</img>"}
    cfg = {"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>",
           "added_tokens_decoder": {i: {"content": t, "special": True} for i, t in added.items()}}
    tok = _with_config(d, tmp_path, **cfg)
    text = "<img><IMG_CONTEXT></img>describe the image<|im_end|>"
    ids = tok.encode(text)
    assert ids[:3] == [n, n + 1, n + 2] and ids[3:] == _per_segment(sp, "describe the image<|im_end|>")
    assert tok(text)["input_ids"][0].tolist() == [sp.bos_id()] + ids  # add_bos_token acts in __call__ only
    assert tok.encode(text, add_special_tokens=True) == [sp.bos_id()] + ids
    assert tok.decode(tok(text)["input_ids"][0], skip_special_tokens=True) == "describe the image"
    assert tok.eos_token_id == sp.eos_id() and tok.convert_tokens_to_ids("<IMG_CONTEXT>") == n + 1
    tok.padding_side = "left"
    batch = tok(["hi", "describe the image"])
    row = [sp.bos_id()] + sp.encode("hi")
    assert batch["input_ids"][0, -len(row):].tolist() == row and batch["attention_mask"][0].sum() == len(row)

    saved = tmp_path / "saved"
    tok.save_pretrained(saved)  # tokenizer.json keeps normalizer, BPE and post-processor
    again = Tokenizer.from_pretrained(saved)
    for t in STRINGS[::10] + [text]:
        assert again(t, return_tensors=None)["input_ids"] == tok(t, return_tensors=None)["input_ids"]

    no_bos = _with_config(d, tmp_path / "nobos", add_bos_token=False)
    assert no_bos("describe", return_tensors=None)["input_ids"] == sp.encode("describe")
    default = _with_config(d, tmp_path / "default")  # InternLM2Tokenizer / LlamaTokenizer default: add <s>
    assert default("describe", return_tensors=None)["input_ids"] == [sp.bos_id()] + sp.encode("describe")
    assert default.eos_token_id == sp.eos_id()  # </s> from the model when the config names none


def test_unigram_and_corrupt_models_are_refused(tmp_path):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([_line(random.Random(i), 0.0) for i in range(300)]),
                                   model_writer=buf, model_type="unigram", vocab_size=150, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="unigram SentencePiece models are not supported"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue()[:-7])
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        Tokenizer.from_pretrained(tmp_path)
