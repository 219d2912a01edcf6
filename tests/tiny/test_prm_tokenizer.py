"""The tiny PRM's tokenizer: the tiny BPE with merges for VisualPRM's system prompt appended; every existing
token keeps its id, new ids stay inside the model's embedding rows, text round-trips, the prompt shrinks."""

from __future__ import annotations

import json

from internvl.processing.tokenizer import Tokenizer
from internvl.tiny import MODEL_DIR, steps
from internvl.tiny.prm_tokenizer import extend
from internvl.tiny.world import make_example
from internvl.tts.prm import PRM_SYSTEM_PROMPT


def test_extended_tokenizer_keeps_ids_and_shortens_the_prompt(tmp_path):
    out = extend(MODEL_DIR, tmp_path / "tok")
    before = json.loads((MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    after = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(after[t] == i for t, i in before.items())
    rows = json.loads((MODEL_DIR / "config.json").read_text())["llm_config"]["vocab_size"]
    assert len(after) > len(before) and max(after.values()) < rows
    old, new = Tokenizer.from_pretrained(MODEL_DIR), Tokenizer.from_pretrained(out)
    assert len(new.encode(PRM_SYSTEM_PROMPT)) * 3 < len(old.encode(PRM_SYSTEM_PROMPT))
    for text in [PRM_SYSTEM_PROMPT] + [steps.step_question(make_example(s)) + steps.step_answer(make_example(s))
                                       for s in range(14)]:
        assert new.decode(new.encode(text)) == text
    for special in ("<|im_start|>", "<|im_end|>", "<IMG_CONTEXT>", "+", "-"):
        assert new.convert_tokens_to_ids(special) == old.convert_tokens_to_ids(special)
    assert extend(MODEL_DIR, tmp_path / "small", max_vocab=len(before) + 5).joinpath("tokenizer.json").exists()
    small = json.loads((tmp_path / "small" / "tokenizer.json").read_text())["model"]["vocab"]
    assert max(small.values()) < len(before) + 5
