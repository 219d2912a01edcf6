"""SentencePiece `tokenizer.model` files, read without the sentencepiece or protobuf packages.

InternLM2/2.5/3 and LLaMA-2/Phi-3 checkpoints often ship only a SentencePiece model. This module decodes the
protobuf wire format of its `ModelProto` (pieces; the trainer and normalizer settings) and rebuilds it as an
equivalent `tokenizers.Tokenizer`: a BPE over the pieces whose merges are every split of a piece into two pieces,
ranked by the merged piece's score (SentencePiece's BPE merges the adjacent pair whose concatenation is the
highest-scored piece), byte fallback to the `<0x..>` pieces, SentencePiece's whitespace handling (spaces become
`▁`, the dummy `▁` prefix, the optional removal of extra spaces, the model's precompiled NFKC-style charsmap) and
a decoder that reverses it. User-defined pieces and control pieces become added tokens, matched whole.

Added tokens split the text first and each segment between them is encoded on its own, as transformers' slow
`InternLM2Tokenizer` / legacy `LlamaTokenizer` do: every segment gets the dummy prefix. With `legacy=False`
(tokenizer_config.json of newer LLaMA/Phi-3 checkpoints) only the segment at the start of the text does, as in
transformers' fast `LlamaTokenizer` (a `Metaspace` pre-tokenizer with prepend_scheme="first").

Known differences from `sentencepiece.SentencePieceProcessor.encode` (the tests pin what does hold):
* Around user-defined pieces: sentencepiece normalizes the whole string, so `"<|im_end|>x"` gives `▁ <|im_end|> x`
  and spaces next to the piece are not stripped by remove_extra_whitespaces; here segments are normalized apart
  (per-segment `sp.encode`, which is what transformers does). Text with no added token is encoded identically.
* `legacy=False`: text that starts with a space gets no extra dummy `▁` (the `Metaspace` rule).
* Pieces of type UNUSED are never merged into (sentencepiece merges then re-splits them); two different pieces of
  the same score are merged in id order, not leftmost-first. Trained BPE models have neither.
* Decoding renders control pieces (`<s>`) and `<unk>` as their text (sentencepiece: "" and " ⁇ "), as transformers.
Unigram, word and char models are refused: InternVL checkpoints use BPE.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type
UNIGRAM, BPE, WORD, CHAR = 1, 2, 3, 4  # TrainerSpec.ModelType


@dataclass
class SentencePieceModel:
    """The fields of `ModelProto` this package uses; defaults are the proto2 defaults."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    def piece(self, i: int) -> str | None:
        return self.pieces[i][0] if 0 <= i < len(self.pieces) else None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """Yields (field number, value) of one protobuf message: an int for varints, bytes for the other wire types."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated message")
        yield number, value


def _int32(v: int) -> int:  # negative int32 values are 10-byte varints
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_model_proto(data: bytes) -> SentencePieceModel:
    """Decodes a serialized `ModelProto`; raises ValueError if the bytes are not one."""
    m = SentencePieceModel()
    for number, value in _fields(data):
        if number == 1:  # SentencePiece: piece=1, score=2 (float), type=3
            piece, score, kind = "", 0.0, NORMAL
            for n, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            m.pieces.append((piece, score, kind))
        elif number == 2:  # TrainerSpec
            names = {3: "model_type", 35: "byte_fallback", 24: "treat_whitespace_as_suffix", 40: "unk_id",
                     41: "bos_id", 42: "eos_id", 43: "pad_id"}
            for n, v in _fields(value):
                if n in names:
                    setattr(m, names[n], bool(v) if n in (24, 35) else _int32(v))
        elif number == 3:  # NormalizerSpec
            for n, v in _fields(value):
                if n == 1:
                    m.normalizer_name = v.decode("utf-8")
                elif n == 2:
                    m.precompiled_charsmap = bytes(v)
                elif n in (3, 4, 5):
                    setattr(m, ("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces")[n - 3], bool(v))
    if not m.pieces:
        raise ValueError("no pieces")
    return m


def read_model(path: str | os.PathLike) -> SentencePieceModel:
    try:
        with open(path, "rb") as f:
            return parse_model_proto(f.read())
    except (ValueError, TypeError, AttributeError, struct.error) as e:  # bytes that are not a ModelProto
        raise CheckpointError(f"{path}: not a SentencePiece model ({e})") from e


def build_tokenizer(m: SentencePieceModel, *, legacy: bool = True, add_bos_token: bool = False,
                    add_eos_token: bool = False, bos_token: str | None = None, eos_token: str | None = None
                    ) -> Tokenizer:
    """The `tokenizers` equivalent of a BPE SentencePiece model (see the module docstring for the rules)."""
    if m.model_type != BPE:
        kind = {UNIGRAM: "unigram", WORD: "word", CHAR: "char"}.get(m.model_type, str(m.model_type))
        raise CheckpointError(f"{kind} SentencePiece models are not supported (InternVL uses BPE ones)")
    if m.treat_whitespace_as_suffix or not m.escape_whitespaces:
        raise CheckpointError("SentencePiece models with treat_whitespace_as_suffix or without "
                              "escape_whitespaces are not supported")
    vocab = {p: i for i, (p, _, _) in enumerate(m.pieces)}
    normal = {p for p, _, t in m.pieces if t == NORMAL}
    merges = []
    for i, (p, score, t) in enumerate(m.pieces):
        if t == NORMAL:
            merges += [(-score, i, vocab[p[:k]], p[:k], p[k:])
                       for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal]
    merges.sort()
    byte_fallback = m.byte_fallback and all(f"<0x{b:02X}>" in vocab for b in range(256))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=m.piece(m.unk_id),
                               fuse_unk=True, byte_fallback=byte_fallback))

    steps = [normalizers.Precompiled(m.precompiled_charsmap)] if m.precompiled_charsmap else []
    if m.remove_extra_whitespaces:  # sentencepiece drops leading, trailing and repeated spaces
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        if legacy or not m.add_dummy_prefix:  # else the kept space is the dummy prefix: Metaspace adds none then
            steps.append(normalizers.Replace(Regex(r"\A "), ""))
    steps.append(normalizers.Replace(" ", "▁"))
    if m.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(r"▁+\z"), ""))
    if legacy and m.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    elif m.add_dummy_prefix:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if m.add_dummy_prefix else []))

    # user-defined pieces are matched whole before BPE (as sentencepiece does); control pieces (<s>, </s>) and
    # <unk> are special, so decode(skip_special_tokens=True) drops them
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p, _, t in m.pieces if t == USER_DEFINED])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, t in m.pieces if t in (CONTROL, UNKNOWN)])

    bos, eos = bos_token or m.piece(m.bos_id), eos_token or m.piece(m.eos_id)
    first = [bos] if add_bos_token and bos in vocab else []
    last = [eos] if add_eos_token and eos in vocab else []
    if first or last:  # used only by encode(..., add_special_tokens=True)
        def seq(s: str, type_id: int) -> str:
            return " ".join([f"{t}:{type_id}" for t in first] + [f"${s}:{type_id}"] + [f"{t}:{type_id}" for t in last])
        tok.post_processor = processors.TemplateProcessing(
            single=seq("A", 0), pair=f"{seq('A', 0)} {seq('B', 1)}",
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(first + last)])
    return tok
