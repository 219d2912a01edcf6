"""SFT data: labels mask exactly the assistant replies for every template; media placement and tiling follow the
official dataset code; bad records fail with file:line and a reason, or are skipped and counted."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tokenizers import processors

from internvl.errors import ConfigError, DataError, TemplateError
from internvl.processing.templates import TEMPLATES
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.data import IGNORE_INDEX, DataConfig, DatasetSpec, SFTDataset, build_sample, read_meta
from internvl.train.packing import PackedCollator

TOK = byte_tokenizer()
CTX = TOK.convert_tokens_to_ids("<IMG_CONTEXT>")


def cfg(**kw) -> DataConfig:
    base = dict(template="internvl2_5", image_size=112, num_image_token=16, max_dynamic_patch=2,
                system_message="S")
    return DataConfig(**{**base, **kw})


def conv(*texts: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(texts)]


def supervised_runs(sample, tok=TOK) -> list[str]:
    """The decoded text of each maximal run of supervised tokens."""
    runs, current = [], []
    for tid, label in zip(sample.input_ids.tolist(), sample.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


@pytest.fixture
def root(tmp_path):
    Image.new("RGB", (200, 100), (200, 30, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (90, 120), (20, 200, 30)).save(tmp_path / "tall.jpg")
    return tmp_path


def write_dataset(tmp_path, lines: list[str], name: str = "d", **meta) -> tuple[str, str]:
    """Write raw JSONL lines and a meta file naming them; returns (meta path, annotation path)."""
    ann = tmp_path / f"{name}.jsonl"
    ann.write_text("\n".join(lines) + "\n")
    entry = {"root": str(tmp_path), "annotation": str(ann), "data_augment": False, "repeat_time": 1, **meta}
    (tmp_path / f"{name}_meta.json").write_text(json.dumps({name: entry}))
    return str(tmp_path / f"{name}_meta.json"), str(ann)


# template -> what each assistant reply must look like as a supervised run (reply + its closing separator)
# GPT-OSS trains on the `final` channel and ends every reply with <|return|> (preprocess_internvl3_5_gpt_oss)
CLOSE = {"internvl2_5": ["<|im_end|>"] * 2, "Hermes-2": ["<|im_end|>"] * 2, "internlm2-chat": ["<|im_end|>"] * 2,
         "phi3-chat": ["<|end|>"] * 2, "internvl_zh": ["</s>"] * 2, "internvl3_5_gpt_oss": ["<|return|>"] * 2,
         "interns1": ["<|im_end|>"] * 2}
OPEN = {"internvl3_5_gpt_oss": "<|channel|>final<|message|>"}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_labels_are_exactly_the_assistant_replies(template, root):
    assert set(CLOSE) == set(TEMPLATES)  # a new template must get a row here
    turns = conv("<image>\nWhat is it?", "A red box.", "And 你好?", "Yes 好")
    record = {"image": "wide.png", "conversations": turns}
    s = build_sample(record, TOK, cfg(template=template), str(root), "t.jsonl:1")
    assert supervised_runs(s) == [OPEN.get(template, "") + a + c for a, c in zip(["A red box.", "Yes 好"],
                                                                                  CLOSE[template])]
    assert not torch.isin(s.input_ids[s.labels != IGNORE_INDEX], torch.tensor([CTX])).any()
    assert int((s.input_ids == CTX).sum()) == 16 * sum(s.num_tiles)
    assert s.input_ids.dtype == s.labels.dtype == torch.long and s.labels.shape == s.input_ids.shape


def test_gpt_oss_labels_with_its_special_tokens(root):
    """With the harmony tokens as single ids: exactly `<|start|>assistant` of each reply is unsupervised."""
    specials = ("<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<img>", "</img>", "<IMG_CONTEXT>")
    tok = byte_tokenizer(specials)
    s = build_sample({"conversations": conv("Hi", "Yo", "Why?", "Fine")}, tok,
                     cfg(template="internvl3_5_gpt_oss", system_message=None), str(root), "t.jsonl:1")
    text = tok.decode(s.input_ids.tolist())
    assert text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Yo<|return|>"
                         "<|start|>user<|message|>Why?<|end|><|start|>assistant<|channel|>final<|message|>Fine<|return|>")
    assert text.startswith("<|start|>system<|message|>You are InternVL")
    assert supervised_runs(s, tok) == ["<|channel|>final<|message|>Yo<|return|>",
                                       "<|channel|>final<|message|>Fine<|return|>"]


def test_v2pe_positions_ride_along_and_pack(root):
    """With v2pe_stride each sample carries V2PE positions; packed rows restart them per sample (float32)."""
    record = {"image": "wide.png", "conversations": conv("What is it?", "A box.")}
    plain = build_sample(record, TOK, cfg(max_dynamic_patch=1), str(root), "t.jsonl:1")
    s = build_sample(record, TOK, cfg(max_dynamic_patch=1, v2pe_stride=0.25), str(root), "t.jsonl:1")
    assert plain.position_ids is None and torch.equal(s.input_ids, plain.input_ids)
    img = (s.input_ids == CTX).nonzero().flatten()
    first = int(img[0])
    assert s.position_ids[first - 1] == first - 1  # text before the image: 0, 1, ...
    assert torch.equal(s.position_ids[img], first - 1 + 0.25 * torch.arange(1, 17, dtype=torch.float32))
    assert s.position_ids[int(img[-1]) + 1] == first - 1 + 4 + 1  # ceil(last image position) + 1
    batch = PackedCollator(pad_id=0, max_tokens=4096)([s, s])
    assert batch.position_ids.dtype == torch.float32
    n = len(s.input_ids)
    assert torch.equal(batch.position_ids[0, :n], s.position_ids) and torch.equal(batch.position_ids[0, n:2 * n],
                                                                                  s.position_ids)
    with pytest.raises(ConfigError, match="v2pe_stride must be in"):
        cfg(v2pe_stride=0)


def test_internlm2_chat_strips_turns_and_bos_is_never_supervised(root):
    tok = byte_tokenizer()
    bos = tok.convert_tokens_to_ids("<|endoftext|>")  # stands in for InternLM2's <s>
    tok._tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                            special_tokens=[("<|endoftext|>", bos)])
    s = build_sample({"conversations": conv("  hi  ", "  an answer \n")}, tok, cfg(template="internlm2-chat"),
                     str(root), "t.jsonl:1")
    assert s.input_ids[0] == bos and s.labels[0] == IGNORE_INDEX
    assert supervised_runs(s, tok) == ["an answer<|im_end|>"]
    assert tok.decode(s.input_ids[1:]).startswith("<|im_start|>system\nS<|im_end|><|im_start|>user\nhi<|im_end|>")


def test_single_image_gets_its_placeholder_and_system_turn_overrides(root):
    record = {"image": "wide.png", "conversations": [{"from": "system", "value": "SYS"}, *conv("Hi", "Yo")]}
    s = build_sample(record, TOK, cfg(), str(root), "t.jsonl:1")
    text = TOK.decode(s.input_ids)
    assert text.startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 48)
    assert "</img>\nHi<|im_end|>" in text
    assert s.num_tiles == [3] and s.pixel_values.shape == (3, 3, 112, 112)  # 2:1 image -> 2x1 grid + thumbnail
    assert s.pixel_values.dtype == torch.float32


def test_multi_image_splits_the_tile_budget_and_keeps_order(root):
    record = {"image": ["wide.png", "tall.jpg"],
              "conversations": conv("Image-1: <image>\nfirst", "ok", "Image-2: <image>\nsecond?", "done")}
    s = build_sample(record, TOK, cfg(max_dynamic_patch=4), str(root), "t.jsonl:1")
    assert s.num_tiles == [3, 1]  # each image gets at most 4 // 2 = 2 tiles; the tall small one fits 1
    text = TOK.decode(s.input_ids)
    assert text.index("Image-1: <img>") < text.index("first") < text.index("Image-2: <img>")
    assert s.pixel_values.shape[0] == 4
    red = s.pixel_values[:3, 0].mean()  # tiles of the red image come first
    assert red > s.pixel_values[3, 0].mean()


def test_multi_image_without_placeholders_is_an_error(root):
    record = {"image": ["wide.png", "tall.jpg"], "conversations": conv("compare", "same")}
    with pytest.raises(DataError, match=r"t.jsonl:7: the human turns have 0 <image> placeholder\(s\) but the "
                                        r"record has 2 image\(s\) \(a multi-image record needs one per image"):
        build_sample(record, TOK, cfg(), str(root), "t.jsonl:7")


def test_video_frames_become_numbered_images(tmp_path):
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            out.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (64, 48), (25 * i, 0, 0)))))
        out.mux(stream.encode())
    record = {"video": "clip.mp4", "conversations": conv("What happens?", "It gets redder.")}
    s = build_sample(record, TOK, cfg(num_video_frames=4), str(tmp_path), "v.jsonl:1")
    assert s.num_tiles == [1, 1, 1, 1] and s.pixel_values.shape == (4, 3, 112, 112)
    text = TOK.decode(s.input_ids)
    assert "user\nFrame-1: <img>" in text and "</img>\nFrame-4: <img>" in text and "</img>\nWhat happens?" in text
    assert supervised_runs(s) == ["It gets redder.<|im_end|>"]


def test_text_only_record(root):
    s = build_sample({"conversations": conv("2+2?", "4")}, TOK, cfg(), str(root), "t.jsonl:1")
    assert s.pixel_values is None and s.num_tiles == [] and supervised_runs(s) == ["4<|im_end|>"]


BAD = [  # (JSONL line, reason the error must give)
    ('{"image": "wide.png", "conversations": [', "malformed JSON"),
    (json.dumps({"image": "missing.png", "conversations": conv("hi", "yo")}), "missing.png: no such file"),
    (json.dumps({"image": "wide.png", "conversations": conv("<image> <image> hi", "yo")}),
     r"2 <image> placeholder\(s\) but the record has 1 image"),
    (json.dumps({"conversations": conv("<image> hi", "yo")}), r"1 <image> placeholder\(s\) but the record has 0"),
    (json.dumps({"image": "wide.png", "conversations": []}), "'conversations' is missing or empty"),
    (json.dumps({"conversations": conv("hi", "yo", "and?")}), "is from 'human': a conversation must end with 'gpt'"),
    (json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}),
     "turn 1 has unknown 'from' 'bot'"),
    (json.dumps({"conversations": [{"from": "gpt", "value": "yo"}, {"from": "gpt", "value": "yo"}]}),
     "turn 0 is from 'gpt': turns must alternate"),
    (json.dumps({"conversations": conv("hi", "  ")}), "turn 1 \\(gpt\\) has an empty or non-string 'value'"),
    (json.dumps({"conversations": conv("hi", "<image> yo"), "image": "wide.png"}), "a gpt turn contains <image>"),
    ('["not", "an", "object"]', "a record must be a JSON object"),
]


@pytest.mark.parametrize("line, reason", BAD)
def test_bad_records_fail_with_file_line_and_reason(tmp_path, root, line, reason):
    good = json.dumps({"conversations": conv("hi", "yo")})
    meta, ann = write_dataset(tmp_path, [good, "", line, good])  # the bad record is on line 3
    ds = SFTDataset(meta, TOK, cfg())
    assert len(ds) == 3 and ds.source(1) == f"{ann}:3"
    assert ds[0] is not None and ds[2] is not None
    with pytest.raises(DataError, match=f"^{ann}:3: .*{reason}"):
        ds[1]


def test_skip_bad_samples_counts_and_the_collator_reports(tmp_path, root):
    good = json.dumps({"image": "wide.png", "conversations": conv("hi", "yo")})
    meta, _ = write_dataset(tmp_path, [good] + [line for line, _ in BAD] + [good])
    ds = SFTDataset(meta, TOK, cfg(skip_bad_samples=True))
    samples = [ds[i] for i in range(len(ds))]
    assert ds.skipped == len(BAD) and sum(s is None for s in samples) == len(BAD)
    assert samples[0].source.endswith(":1") and samples[-1].source.endswith(f":{len(BAD) + 2}")
    # tokenization and image loading run in DataLoader workers, forked after this process has tiled images
    # (a fork-unsafe thread pool would hang here: the timeout turns that into a failure); skipped samples are
    # counted per batch
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, timeout=60,
                                         collate_fn=PackedCollator(TOK.pad_token_id, max_tokens=512))
    batches = list(loader)
    assert sum(b.num_skipped for b in batches) == len(BAD) and sum(b.num_samples for b in batches) == 2
    assert sum(len(b.num_tiles) for b in batches) == 2


def test_meta_file_per_dataset_tiling_and_repeat_time(tmp_path, root):
    lines = [json.dumps({"image": "wide.png", "conversations": conv(f"q{i}", f"a{i}")}) for i in range(10)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    meta = {"one_tile": {"root": "imgs_x", "annotation": "a.jsonl", "max_dynamic_patch": 1, "repeat_time": 2,
                         "data_augment": False, "length": 10},
            "half": {"root": str(root), "annotation": "a.jsonl", "repeat_time": 0.5, "data_augment": False,
                     "length": 10}}
    (tmp_path / "imgs_x").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "imgs_x" / "wide.png")
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    specs = read_meta(tmp_path / "meta.json")  # relative paths resolve beside the meta file
    assert [s.annotation for s in specs] == [str(tmp_path / "a.jsonl")] * 2
    assert specs[0].root == str(tmp_path / "imgs_x")
    ds = SFTDataset(specs, TOK, cfg(), seed=0)
    assert len(ds) == 25
    assert ds[0].num_tiles == [1] and ds[20].num_tiles == [3]  # per-dataset max_dynamic_patch, else the config's
    half = [ds.source(i) for i in range(20, 25)]
    assert len(set(half)) == 5 and half == [SFTDataset(specs, TOK, cfg(), seed=0).source(i) for i in range(20, 25)]
    others = {tuple(SFTDataset(specs, TOK, cfg(), seed=s).source(i) for i in range(20, 25)) for s in range(1, 6)}
    assert len(others | {tuple(half)}) > 1  # the subsample depends on the seed
    specs[1].repeat_time = 1.5
    assert len(SFTDataset(specs, TOK, cfg())) == 35


@pytest.mark.parametrize("entry, reason", [
    ({"annotation": "a.jsonl"}, "key 'root' is missing"),
    ({"root": "."}, "key 'annotation' is missing"),
    ({"root": ".", "annotation": "nope.jsonl"}, "key 'annotation': no such file 'nope.jsonl'"),
    ({"root": ".", "annotation": "a.jsonl", "repeat_time": 0}, "key 'repeat_time' must be a number > 0"),
    ({"root": ".", "annotation": "a.jsonl", "max_dynamic_patch": 0}, "key 'max_dynamic_patch' must be an integer"),
    ({"root": ".", "annotation": "a.jsonl", "data_augment": "yes"}, "key 'data_augment' must be true or false"),
])
def test_read_meta_names_the_bad_key(tmp_path, entry, reason):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "m.json").write_text(json.dumps({"ds": entry}))
    with pytest.raises(DataError, match=f"dataset 'ds': {reason}"):
        read_meta(tmp_path / "m.json")


def test_read_meta_bad_json_and_unknown_keys(tmp_path):
    (tmp_path / "m.json").write_text('{"ds": {"root": ".",\n "annotation": }}')
    with pytest.raises(DataError, match=r"m.json:2: malformed JSON"):
        read_meta(tmp_path / "m.json")
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "m.json").write_text(json.dumps({"ds": {"root": ".", "annotation": "a.jsonl", "weight": 2}}))
    with pytest.warns(UserWarning, match=r"ignoring unknown key\(s\) \['weight'\]"):
        assert read_meta(tmp_path / "m.json")[0].repeat_time == 1.0


def test_too_long_samples_truncate_or_fail(root):
    record = {"conversations": conv("hi", "a long answer " * 20)}
    full = build_sample(record, TOK, cfg(), str(root), "t.jsonl:1")
    cut = build_sample(record, TOK, cfg(max_seq_length=60), str(root), "t.jsonl:1")
    assert len(cut.input_ids) == 60 and torch.equal(cut.input_ids, full.input_ids[:60])
    assert torch.equal(cut.labels, full.labels[:60]) and (cut.labels != IGNORE_INDEX).any()
    with pytest.raises(DataError, match="no supervised tokens within max_seq_length 30"):
        build_sample(record, TOK, cfg(max_seq_length=30), str(root), "t.jsonl:1")
    with pytest.raises(DataError, match="truncating would cut image tokens"):
        build_sample({**record, "image": "wide.png"}, TOK, cfg(max_seq_length=40), str(root), "t.jsonl:1")


def test_data_augment_is_seeded_jpeg_degradation(tmp_path, root):
    line = json.dumps({"image": "wide.png", "conversations": conv("hi", "yo")})
    _, ann = write_dataset(tmp_path, [line, line])
    plain = DatasetSpec("p", str(root), ann)
    aug = DatasetSpec("a", str(root), ann, data_augment=True)
    clean = SFTDataset([plain], TOK, cfg())[0].pixel_values
    ds = SFTDataset([aug], TOK, cfg(), seed=3)
    first = ds[0].pixel_values
    assert first.shape == clean.shape and not torch.equal(first, clean)
    assert (first - clean).abs().mean() < 0.2  # a JPEG round trip, not a different image
    assert torch.equal(first, SFTDataset([aug], TOK, cfg(), seed=3)[0].pixel_values)


def test_from_model_config():
    from internvl.presets import PRESETS
    c = DataConfig.from_model(PRESETS["tiny-random"].config, max_seq_length=128)
    assert (c.image_size, c.num_image_token, c.max_dynamic_patch, c.max_seq_length) == (112, 16, 6, 128)
    assert c.template == "internvl2_5" and c.use_thumbnail


def test_data_config_is_checked():
    with pytest.raises(TemplateError, match="unknown conversation template 'chatml'"):
        cfg(template="chatml")
    with pytest.raises(ConfigError, match="max_seq_length must be >= 1"):
        cfg(max_seq_length=0)
    with pytest.raises(ConfigError, match=r"min_dynamic_patch \(3\) <= max_dynamic_patch \(2\)"):
        cfg(min_dynamic_patch=3)
