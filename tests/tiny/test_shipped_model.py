"""The shipped tiny InternVL (`internvl/tiny/model/`): it loads, is small, is the default of chat / eval / serve,
learned from the pixels (held-out accuracy well above the blind baseline), the README's examples are the
generator's, and exported to the -hf layout it gives transformers the same greedy answers.

Issue 16 asks for >= 85% on 100 held-out questions. The model shipped now scores 88.0% on 500 (its model card
has the numbers); the fixed 100-question sample below scores 89% in bf16 and in fp32, a margin of 4 questions.
The test also asks for at least 40 points over answering blind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from internvl.chat import from_pretrained
from internvl.cli import main
from internvl.demo import answer_examples
from internvl.eval.runner import EvalConfig, evaluate
from internvl.processing.image import load_question_images
from internvl.tiny import DEFAULT_MODEL, EXAMPLES_DIR, MODEL_DIR
from internvl.tiny.examples import load_examples, write_examples

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def shipped():
    model, tok = from_pretrained(MODEL_DIR, dtype=torch.float32)
    return model, tok


def test_shipped_checkpoint_is_small_official_and_default():
    assert DEFAULT_MODEL == str(MODEL_DIR)
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["template"] == "internvl2_5"
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir())
    assert size <= 40 * 2**20, f"the shipped model is {size / 2**20:.1f} MiB, over the 40 MiB budget"
    card = (MODEL_DIR / "README.md").read_text()
    assert "## Accuracy" in card and "make tiny" in card


def test_example_files_are_what_the_generator_writes(tmp_path):
    write_examples(tmp_path)
    for f in EXAMPLES_DIR.iterdir():
        if f.suffix in (".png", ".json"):
            assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name


def test_readme_examples_are_the_generated_ones(shipped):
    examples = load_examples()
    readme_rows = re.findall(r"^\| `(shapes-.+?)` \| (.+?) \| `(\w+)` \|$", README.read_text(), re.M)
    assert len(readme_rows) >= 5
    listed = {(q.images, q.question, q.answer) for q in examples}
    for images, question, answer in readme_rows:
        assert (tuple(images.split("` + `")), question, answer) in listed, (images, question)
    answers = answer_examples(*shipped, examples)
    assert len(answers) == len(examples) and all(a.strip() for a in answers)


def test_heldout_accuracy_is_well_above_blind(shipped, tmp_path):
    summary = evaluate(EvalConfig(model=DEFAULT_MODEL, n=100, seed=5000, out=str(tmp_path)), *shipped)
    assert summary["accuracy"] >= 0.85 and summary["gain_over_blind"] >= 0.40, \
        (summary["accuracy"], summary["blind"]["accuracy"])


def test_chat_and_eval_default_to_the_shipped_model(shipped, capsys, tmp_path):
    question = next(q for q in load_examples() if q.images == ("shapes-1.png",))
    expected = answer_examples(*shipped, [question])[0]
    assert main(["chat", "--image", str(EXAMPLES_DIR / "shapes-1.png"), "--max-new-tokens", "8", "--dtype", "fp32",
                 question.question]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
    assert main(["eval", "shapes", "--n", "7", "--no-blind", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["model"] == DEFAULT_MODEL


def test_hf_export_gives_transformers_the_same_greedy_answers(shipped, tmp_path):
    transformers = pytest.importorskip("transformers")
    from internvl.checkpoint.loader import convert
    from internvl.processing.prompt import build_query
    from internvl.processing.templates import get_template

    model, tok = shipped
    hf_dir = convert(MODEL_DIR, tmp_path / "tiny-hf", "hf")
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cfg = model.config
    examples = load_examples()
    ours = answer_examples(model, tok, examples)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for q, our_answer in zip(examples, ours):
        tiles = load_question_images([EXAMPLES_DIR / n for n in q.images], cfg)
        query = build_query(get_template(cfg.template), q.prompt, None, [t.shape[0] for t in tiles],
                            cfg.num_image_token, cfg.system_message)
        ids = torch.tensor([tok(query, return_tensors=None)["input_ids"]])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, pixel_values=torch.cat(tiles), max_new_tokens=8, do_sample=False,
                              eos_token_id=end, pad_token_id=end)
        theirs = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()
        assert theirs == our_answer.strip(), (q.question, q.images)


def test_official_to_hf_and_back_keeps_every_setting_and_answer(shipped, tmp_path):
    """Converting used to drop max_dynamic_patch (6 -> the -hf default 12) and force_image_size, which changed
    the tiling and so the answers to half the example questions."""
    from internvl.checkpoint.loader import convert, read_config
    hf = convert(MODEL_DIR, tmp_path / "hf", "hf")
    back = convert(hf, tmp_path / "back", "official")
    assert read_config(hf)[0] == shipped[0].config == read_config(back)[0]
    assert json.loads((back / "config.json").read_text()) == json.loads((MODEL_DIR / "config.json").read_text())
    examples = load_examples()
    want = answer_examples(*shipped, examples)
    for directory in (hf, back):
        assert answer_examples(*from_pretrained(directory, dtype=torch.float32), examples) == want, directory
