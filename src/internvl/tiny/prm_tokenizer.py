"""The tiny PRM's tokenizer: the tiny model's BPE plus merges learned on VisualPRM's system prompt.

The tiny BPE was trained on the shapes world's words only, so VisualPRM's English system prompt (sent
verbatim with every PRM conversation) costs 749 tokens, most of them single bytes: 3/4 of every training
sample and of every scoring prefix. Merges learned on the prompt text (and the `### Question:` /
`### Solution Process:` headers) bring it to about 180 tokens. They are appended after the existing merges
and their tokens get new ids after the existing ones, into the embedding rows the tiny model reserves
unused, so every existing token keeps its id and the policy's weights still start the PRM.

    python -m internvl.tiny.prm_tokenizer --tokenizer DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer as _Tok

from ..processing.tokenizer import Tokenizer
from ..tts.prm import PRM_SYSTEM_PROMPT, first_turn

MAX_NEW_TOKENS = 400


def prompt_texts() -> list[str]:
    """What the PRM reads in every conversation besides the question and the steps."""
    return [PRM_SYSTEM_PROMPT, first_turn("", "")]


def learn_merges(tok: _Tok, texts: list[str], max_new: int) -> list[tuple[str, str]]:
    """BPE merges over `texts`, starting from `tok`'s own segmentation: the most frequent adjacent pair
    first (ties: the pair seen first), until no pair is left or `max_new` merges."""
    words: Counter = Counter()
    for text in texts:
        for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            words[piece] += 1
    segs = {w: [t.value for t in tok.model.tokenize(w)] for w in words}
    vocab = set(tok.get_vocab())
    merges: list[tuple[str, str]] = []
    while len(merges) < max_new:
        pairs: Counter = Counter()
        for w, n in words.items():
            s = segs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        pairs = Counter({p: n for p, n in pairs.items() if p[0] + p[1] not in vocab})
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: kv[1])[0]  # max() keeps the first of equal counts
        merges.append(best)
        vocab.add(best[0] + best[1])
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def extend(directory: str | os.PathLike, out: str | os.PathLike, max_new: int = MAX_NEW_TOKENS,
           max_vocab: int | None = None) -> Path:
    """Write `directory`'s tokenizer with the PRM prompt's merges appended into `out`.

    Args:
        max_vocab: The model's embedding rows: new ids stay below it (default: read from `directory`'s
            config.json when it is a checkpoint).
    """
    src, out = Path(directory), Path(out)
    if max_vocab is None and (src / "config.json").exists():  # a checkpoint: its embedding rows
        config = json.loads((src / "config.json").read_text())
        max_vocab = (config.get("llm_config") or config.get("text_config") or {}).get("vocab_size")
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok = _Tok.from_str(json.dumps(data))
    vocab = data["model"]["vocab"]
    next_id = max(max(vocab.values()), *(t["id"] for t in data["added_tokens"])) + 1
    if max_vocab is not None:
        max_new = min(max_new, max_vocab - next_id)
    merges = learn_merges(tok, prompt_texts(), max_new)
    pair_as_list = bool(data["model"]["merges"]) and isinstance(data["model"]["merges"][0], list)
    for a, b in merges:
        vocab[a + b] = next_id
        next_id += 1
        data["model"]["merges"].append([a, b] if pair_as_list else f"{a} {b}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Extend the tiny tokenizer with merges for the PRM prompt.")
    parser.add_argument("--tokenizer", required=True, help="directory of the policy's tokenizer")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--max-new", type=int, default=MAX_NEW_TOKENS, help="most new tokens")
    parser.add_argument("--max-vocab", type=int, default=None,
                        help="the model's embedding rows (new ids stay below; default: from --tokenizer's config.json)")
    args = parser.parse_args(argv)
    out = extend(args.tokenizer, args.out, args.max_new, args.max_vocab)
    before, after = Tokenizer.from_pretrained(args.tokenizer), Tokenizer.from_pretrained(out)
    print(f"wrote {out}: {after.vocab_size} tokens; the PRM system prompt is "
          f"{len(after.encode(PRM_SYSTEM_PROMPT))} tokens (was {len(before.encode(PRM_SYSTEM_PROMPT))})")


if __name__ == "__main__":
    main()
