"""The tokenizer: a thin wrapper over the `tokenizers` library with the calls `chat()` scripts make.

Spec section 3. Loads `tokenizer.json` when the checkpoint has one, else builds a byte-level BPE from
`vocab.json` + `merges.txt` (Qwen-style checkpoints), else converts a SentencePiece `tokenizer.model`
(InternLM2/LLaMA-style checkpoints, see `sentencepiece.py`); then adds the tokens of `tokenizer_config.json`.
Offers the slice of the transformers tokenizer API that InternVL quick-start code uses: `__call__` with
left/right padding, `convert_tokens_to_ids`, `decode`, `batch_decode`, `eos_token_id`, `padding_side`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer as _Tok, decoders, models, pre_tokenizers

from ..errors import CheckpointError
from . import sentencepiece

logger = logging.getLogger(__name__)
# Intern-S1's extra SentencePiece models for scientific spans; not used here (the base BPE tokenizes those spans)
INTERNS1_SUB_TOKENIZERS = ("tokenizer_SMILES.model", "tokenizer_IUPAC.model", "tokenizer_FASTA.model")

# Qwen2's pre-tokenizer split pattern (a fact of the Qwen2 tokenizer, needed to rebuild it from vocab/merges).
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class Tokenizer:
    """Text <-> token ids, with the special tokens InternVL prompts use."""

    def __init__(self, tok: _Tok, eos_token: str | None = None, pad_token: str | None = None) -> None:
        self._tok = tok
        self.padding_side = "right"
        self.eos_token = eos_token
        self.pad_token = pad_token or eos_token
        self._special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        self._plain: _Tok | None = None  # a copy that reads special tokens' spellings as plain text

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Tokenizer:
        d = Path(directory)
        cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
        added = [(int(i), t) for i, t in cfg.get("added_tokens_decoder", {}).items()]
        if (d / "added_tokens.json").exists():
            added += [(i, {"content": t, "special": True}) for t, i in json.loads((d / "added_tokens.json").read_text()).items()]
        if (d / "tokenizer.json").exists():
            tok = _Tok.from_file(str(d / "tokenizer.json"))
        elif (d / "vocab.json").exists() and (d / "merges.txt").exists():
            # added tokens keep their declared ids, even past a gap (Intern-S1 reserves ids for its sub-tokenizers)
            tok = _byte_level_bpe(d / "vocab.json", d / "merges.txt", {t["content"]: i for i, t in added})
            extra = [n for n in INTERNS1_SUB_TOKENIZERS if (d / n).exists()]
            if extra:
                logger.warning("%s: %s not used; SMILES / IUPAC / FASTA text is tokenized by the base BPE "
                               "(Intern-S1's dynamic tokenizer gives such spans their own ids)", d, ", ".join(extra))
        elif (d / "tokenizer.model").exists():
            sp = sentencepiece.read_model(d / "tokenizer.model")
            try:
                tok = sentencepiece.build_tokenizer(
                    sp, legacy=cfg.get("legacy", True) is not False, add_bos_token=cfg.get("add_bos_token", True),
                    add_eos_token=cfg.get("add_eos_token", False), bos_token=_token_text(cfg.get("bos_token")),
                    eos_token=_token_text(cfg.get("eos_token")))
            except CheckpointError as e:
                raise CheckpointError(f"{d / 'tokenizer.model'}: {e}") from e
            cfg.setdefault("eos_token", sp.piece(sp.eos_id))
        else:
            raise CheckpointError(f"{d}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, "
                                  "or tokenizer.model)")
        for _, t in sorted(added, key=lambda x: x[0]):
            # registered even when the vocabulary has the string, so it is matched whole, never split by BPE
            token = AddedToken(t["content"], special=t.get("special", True), normalized=False)
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        return cls(tok, _token_text(cfg.get("eos_token")), _token_text(cfg.get("pad_token")))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(d / "tokenizer.json"))
        cfg = {"eos_token": self.eos_token, "pad_token": self.pad_token, "tokenizer_class": "PreTrainedTokenizerFast"}
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int:
        pid = None if self.pad_token is None else self._tok.token_to_id(self.pad_token)
        return 0 if pid is None else pid

    def convert_tokens_to_ids(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text` ((0, 0) for added BOS/EOS)."""
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        return enc.ids, enc.offsets

    def control_tokens(self) -> frozenset[str]:
        """The special tokens a user's text must not be able to produce (template markers, image tokens, EOS):
        every special token except the markup InternVL's prompts ask users to write (`<ref>`, `<box>`, ...)."""
        return frozenset(self._special - set(USER_MARKUP_TOKENS))

    def encode_prompt(self, text: str, plain_spans: list[tuple[int, int]] = ()) -> list[int]:
        """`text`'s ids as `__call__` gives them, except that a special token matched inside one of the
        character spans `plain_spans` becomes the ids of its spelling as plain text (as transformers'
        `split_special_tokens=True` would tokenize it). Everything else is tokenized exactly as before: the
        tokenizer splits text at special tokens anyway, so nothing around them changes."""
        enc = self._tok.encode(text, add_special_tokens=True)
        if not plain_spans:
            return enc.ids
        special_ids = {self._tok.token_to_id(t) for t in self._special}
        ids: list[int] = []
        for tid, (a, b) in zip(enc.ids, enc.offsets):
            if b > a and tid in special_ids and any(lo <= a and b <= hi for lo, hi in plain_spans):
                ids += self._plain_tokenizer().encode(text[a:b], add_special_tokens=False).ids
            else:
                ids.append(tid)
        return ids

    def _plain_tokenizer(self) -> _Tok:
        if self._plain is None:
            plain = _Tok.from_str(self._tok.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: list[list[int]] | torch.Tensor, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def __call__(self, texts: str | list[str], return_tensors: str | None = "pt", padding: bool = True
                 ) -> dict[str, torch.Tensor | list]:
        """Encode one or several texts; pads to the longest on `padding_side` with `pad_token_id`."""
        single = isinstance(texts, str)
        # like transformers' tokenizer(...): the tokenizer's own post-processor runs (InternLM2 adds <s>)
        batch = [self.encode(t, add_special_tokens=True) for t in ([texts] if single else texts)]
        if return_tensors is None:
            return {"input_ids": batch[0] if single else batch}
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            sl = slice(width - len(seq), width) if self.padding_side == "left" else slice(0, len(seq))
            ids[row, sl] = torch.tensor(seq, dtype=torch.long)
            mask[row, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _token_text(t: str | dict | None) -> str | None:
    return t.get("content") if isinstance(t, dict) else t


def _byte_level_bpe(vocab: Path, merges: Path, added: dict[str, int] | None = None) -> _Tok:
    lines = [m for m in merges.read_text(encoding="utf-8").splitlines() if m and not m.startswith("#version")]
    table = json.loads(vocab.read_text(encoding="utf-8"))
    taken = set(table.values())
    for content, i in (added or {}).items():
        if content not in table and i not in taken:
            table[content] = i
    bpe = models.BPE(vocab=table, merges=[tuple(m.split(" ", 1)) for m in lines])
    tok = _Tok(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


# Special tokens of InternVL prompts (spec section 3) plus the ChatML markers of the internvl2_5 template.
INTERNVL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                           "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")


# Special tokens InternVL's prompts ask users to write themselves (grounding: "<ref>the cat</ref>",
# "<box>[[x1, y1, x2, y2]]</box>"), so they stay special tokens in user text.
USER_MARKUP_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")


def byte_tokenizer(special_tokens: tuple[str, ...] = INTERNVL_SPECIAL_TOKENS) -> Tokenizer:
    """A merge-free byte-level tokenizer (256 byte tokens + specials): for tests and random-weight demos."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = _Tok(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return Tokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
