"""MPO data: an MMPR line becomes the two sequences the official MPO dataset makes (the template's text with its
default system message, `<image>\\n` prepended to a single-image question without one, only the response and its
`<|im_end|>` scored), sharing one set of tiles; bad lines fail with file:line or are skipped and counted; the
collator puts every chosen sequence before every rejected one, padded or packed, with the tiles in token order."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from internvl.errors import DataError
from internvl.processing.templates import TEMPLATES
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.data import IGNORE_INDEX, DataConfig, build_sample
from internvl.train.mpo_data import PreferenceCollator, PreferenceDataset, build_pair

TOK = byte_tokenizer()
SYSTEM = TEMPLATES["internvl2_5"].system_message


def cfg(**kw) -> DataConfig:
    return DataConfig(**{**dict(template="internvl2_5", image_size=112, num_image_token=16, max_dynamic_patch=2), **kw})


@pytest.fixture
def root(tmp_path):
    Image.new("RGB", (224, 112), (200, 30, 30)).save(tmp_path / "wide.png")  # 2 tiles + thumbnail at 2 max
    Image.new("RGB", (100, 100), (20, 200, 30)).save(tmp_path / "sq.png")
    return tmp_path


def write(tmp_path, records: list, name: str = "p", **meta) -> str:
    ann = tmp_path / f"{name}.jsonl"
    ann.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    entry = {"root": str(tmp_path), "annotation": str(ann), "repeat_time": 1, **meta}
    (tmp_path / f"{name}_meta.json").write_text(json.dumps({name: entry}))
    return str(tmp_path / f"{name}_meta.json")


def official_text(question: str, response: str, tiles: list[int]) -> str:
    """The official `preprocess_internvl2_5` text of [human: question, gpt: response] (docs section 1.4)."""
    for n in tiles:
        question = question.replace("<image>", "<img>" + "<IMG_CONTEXT>" * (16 * n) + "</img>", 1)
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{response}<|im_end|>\n")


def scored(sample) -> str:
    keep = sample.labels != IGNORE_INDEX
    assert torch.equal(sample.labels[keep], sample.input_ids[keep])
    return TOK.decode(sample.input_ids[keep].tolist())


@pytest.mark.parametrize("question,image,tiles,shown", [
    ("What is it?", "wide.png", [3], "<image>\nWhat is it?"),  # single image, placeholder prepended
    ("Look: <image>\nWhat is it?", "sq.png", [1], "Look: <image>\nWhat is it?"),  # placeholder kept where it is
    ("Image-1: <image>\nImage-2: <image>\nSame?", ["wide.png", "sq.png"], [1, 1], None),  # 2 images share 2 tiles
    ("What is 2 plus 2?", None, [], "What is 2 plus 2?"),  # text only
])
def test_pair_is_the_official_tokenization(root, question, image, tiles, shown):
    record = {"question": question, "chosen": "A good answer.", "rejected": "Bad."}
    if image is not None:
        record["image"] = image
    chosen, rejected = build_pair(record, TOK, cfg(), str(root), "f.jsonl:1")
    shown = shown or question
    assert TOK.decode(chosen.input_ids.tolist()) == official_text(shown, "A good answer.", tiles)
    assert TOK.decode(rejected.input_ids.tolist()) == official_text(shown, "Bad.", tiles)
    assert scored(chosen) == "A good answer.<|im_end|>" and scored(rejected) == "Bad.<|im_end|>"
    assert chosen.num_tiles == rejected.num_tiles == tiles
    if tiles:
        assert chosen.pixel_values is rejected.pixel_values and chosen.pixel_values.shape[0] == sum(tiles)
    else:
        assert chosen.pixel_values is None
    # the same as the SFT dataset's sample of the one-turn conversation (the official code calls one preprocess)
    sft = build_sample({**({"image": image} if image else {}), "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": "A good answer."}]}, TOK, cfg(), str(root), "s")
    assert torch.equal(sft.input_ids, chosen.input_ids) and torch.equal(sft.labels, chosen.labels)


def test_dataset_repeat_and_per_dataset_tiles(root):
    lines = [{"image": "wide.png", "question": "Q?", "chosen": "yes", "rejected": "no"},
             {"question": "T?", "chosen": "1", "rejected": "2"}]
    ds = PreferenceDataset(write(root, lines, max_dynamic_patch=1, repeat_time=2), TOK, cfg())
    assert len(ds) == 4
    pair = ds[2]
    assert pair.index == 2 and pair.chosen.num_tiles == [1]  # the meta's max_dynamic_patch 1 overrides 2
    assert ds[3].chosen.pixel_values is None


@pytest.mark.parametrize("line,message", [
    ('{"image": "sq.png", "question": "Q?", "rejected": "no"}', "f.jsonl:2: 'chosen' is missing"),
    ('{"question": "Q?", "chosen": "", "rejected": "no"}', "f.jsonl:2: 'chosen' is missing or not a non-empty"),
    ('{"question": "Q?", "chosen": "a", "rejected": 3}', "'rejected' is missing or not a non-empty string"),
    ('{"question": "Q?", "chosen": "a", "rejected": "b"', "f.jsonl:2: malformed JSON"),
    ('["question"]', "a record must be a JSON object"),
    ('{"image": "gone.png", "question": "Q?", "chosen": "a", "rejected": "b"}', "gone.png"),
    ('{"image": ["sq.png", "sq.png"], "question": "Q?", "chosen": "a", "rejected": "b"}', "0 <image> placeholder"),
    ('{"image": "sq.png", "question": "Q?", "chosen": "a", "rejected": "b <image>"}', "placeholders belong"),
    ('{"image": 5, "question": "Q?", "chosen": "a", "rejected": "b"}', "'image' must be a path"),
])
def test_bad_lines_name_file_and_line_or_are_skipped(root, line, message):
    good = {"question": "Fine?", "chosen": "yes", "rejected": "no"}
    ann = root / "f.jsonl"
    ann.write_text(json.dumps(good) + "\n" + line + "\n" + json.dumps(good) + "\n")
    meta = root / "m.json"
    meta.write_text(json.dumps({"d": {"root": str(root), "annotation": str(ann), "repeat_time": 1}}))
    ds = PreferenceDataset(meta, TOK, cfg())
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(e.value).startswith(f"{ann}:2: ") and message.replace("f.jsonl", str(ann)) in str(e.value)
    skipping = PreferenceDataset(meta, TOK, cfg(skip_bad_samples=True))
    batch = PreferenceCollator(TOK.pad_token_id)([skipping[i] for i in range(3)])
    assert batch.num_pairs == 2 and batch.num_skipped == 1 and skipping.skipped == 1


def test_too_long_pair_is_an_error(root):
    meta = write(root, [{"question": "Q " * 80, "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="no supervised tokens within max_seq_length 60"):
        PreferenceDataset(meta, TOK, cfg(max_seq_length=60))[0]


@pytest.mark.parametrize("max_tokens", [None, 4000])
def test_collator_puts_chosen_first_and_tiles_in_token_order(root, max_tokens):
    lines = [{"image": "wide.png", "question": "Q?", "chosen": "yes it is", "rejected": "no"},
             {"question": "T?", "chosen": "1", "rejected": "2 or 3"},
             {"image": "sq.png", "question": "R?", "chosen": "red", "rejected": "blue, surely"}]
    ds = PreferenceDataset(write(root, lines), TOK, cfg())
    pairs = [ds[i] for i in range(3)]
    pb = PreferenceCollator(TOK.pad_token_id, max_tokens)([pairs[0], None, pairs[1], pairs[2]])
    b = pb.batch
    assert pb.num_pairs == 3 and pb.num_skipped == 1 and pb.indices.tolist() == [0, 1, 2]
    order = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    for s, (row, seq) in zip(order, b.slots):  # each sequence sits where its slot says, unchanged
        where = b.seq_ids[row] == seq
        assert torch.equal(b.input_ids[row][where], s.input_ids)
    assert b.input_ids.shape[0] == (6 if max_tokens is None else 1)
    # each pair's tiles once; tile_index orders them as the image tokens appear: for padded rows chosen 0 (3
    # tiles), chosen 2 (1), rejected 0 (3), rejected 2 (1)
    assert torch.equal(b.pixel_values, torch.cat([pairs[0].chosen.pixel_values, pairs[2].chosen.pixel_values]))
    expected = [0, 1, 2, 3, 0, 1, 2, 3] if max_tokens is None else None
    if expected is not None:
        assert pb.tile_index.tolist() == expected
    seen = []  # in any layout: walk the rows and their sequences, collecting each one's tiles
    for i in sorted(range(6), key=lambda i: b.slots[i]):
        if i % 3 != 1:
            seen.append(pairs[i % 3].chosen.pixel_values)
    assert torch.equal(b.pixel_values[pb.tile_index], torch.cat(seen)) and b.num_tiles == [3, 1, 3, 1][:len(b.num_tiles)]
    assert pb.num_tokens == sum(len(s.input_ids) for s in order)
