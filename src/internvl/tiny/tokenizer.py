"""The tiny model's tokenizer: a small byte-level BPE trained on the synthetic world's conversations.

Trained with the `tokenizers` library on every question and answer of `world.py`, rendered exactly as the
model sees them (the `internvl2_5` template with its system message), plus printable ASCII. Byte-level, so
any text encodes (unseen characters fall back to byte tokens); Qwen2's split pattern, so digits are single
tokens. It carries the InternVL special tokens and ChatML markers as single ids (0-11, in the order of
`INTERNVL_SPECIAL_TOKENS`) and saves in the layout `processing/tokenizer.py` loads. Same inputs give
byte-identical files. Not the general tokenizer wrapper (that is `processing/tokenizer.py`).

    python -m internvl.tiny.tokenizer --out DIR
"""

from __future__ import annotations

import argparse
import os
import re
import string
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Tok

from ..processing.prompt import expand_images
from ..processing.templates import get_template, render
from ..processing.tokenizer import _QWEN_SPLIT, INTERNVL_SPECIAL_TOKENS, Tokenizer
from . import world

VOCAB_SIZE = 1024  # an upper bound: training stops earlier once every corpus word is one token
TEMPLATE = "internvl2_5"
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in INTERNVL_SPECIAL_TOKENS))
# Shape plurals are trained as their singular, so BPE never merges "circles" into one token and it encodes as
# " circle" + "s": "How many circles" then holds the very token stage 0 aligned with circles in images (a
# separate " circles" token would have to learn what a circle looks like from the counting questions alone).
_PLURAL = re.compile(r"\b(" + "|".join(world.SHAPES) + r")s\b")


def corpus(template: str = TEMPLATE) -> list[str]:
    """The training texts: each world question in a full rendered prompt, each answer closing a turn,
    and printable ASCII; special tokens are cut out first (they are never merged into other tokens)."""
    tpl = get_template(template)
    texts = []
    for question in world.question_texts():
        n_images = question.count("<image>") or 1
        if "<image>" not in question:
            question = "<image>\n" + question
        texts.append(expand_images(render(tpl, [(0, question), (1, None)]), [1] * n_images, 1))
    texts += [answer + tpl.sep for answer in world.answer_texts() + world.description_texts()]
    texts.append(string.printable)
    texts = [_PLURAL.sub(r"\1", text) for text in texts]
    return [piece for text in texts for piece in _SPECIAL_SPLIT.split(text) if piece]


def train_tokenizer(vocab_size: int = VOCAB_SIZE, template: str = TEMPLATE) -> Tokenizer:
    """Train the tiny tokenizer (deterministic; well under a second)."""
    tok = _Tok(models.BPE())
    # the same pre-tokenization as Qwen2's tokenizer: split pattern, then bytes -> printable characters
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any input encodes
                                  special_tokens=[AddedToken(t, special=True, normalized=False)
                                                  for t in INTERNVL_SPECIAL_TOKENS])
    tok.train_from_iterator(corpus(template), trainer)
    return Tokenizer(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def save_tokenizer(directory: str | os.PathLike, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train and write `tokenizer.json` + `tokenizer_config.json` into `directory`."""
    train_tokenizer(vocab_size).save_pretrained(directory)
    return Path(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny InternVL's BPE tokenizer.")
    parser.add_argument("--out", required=True, help="directory to write tokenizer.json / tokenizer_config.json")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    save_tokenizer(args.out, args.vocab_size)
    print(f"wrote {args.out}/tokenizer.json ({Tokenizer.from_pretrained(args.out).vocab_size} tokens)")


if __name__ == "__main__":
    main()
