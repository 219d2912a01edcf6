"""Dataset export: official meta JSON + JSONL + PNGs, balanced question types, disjoint train/held-out."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from internvl.errors import ConfigError
from internvl.hardware import available_cpus
from internvl.tiny import dataset
from internvl.tiny.world import QUESTION_TYPES, make_example


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_export_writes_the_official_format(tmp_path):
    meta_path = dataset.export(tmp_path / "train", n=21, seed=100)
    meta = json.loads(meta_path.read_text())
    assert list(meta) == ["shapes_train"]
    entry = meta["shapes_train"]
    assert entry == {"root": entry["root"], "annotation": entry["annotation"], "data_augment": False,
                     "max_dynamic_patch": 6, "repeat_time": 1, "length": 21}
    records = read_jsonl(entry["annotation"])
    assert len(records) == 21
    for seed, record in zip(range(100, 121), records):
        example = make_example(seed)
        assert set(record) == {"id", "image", "conversations"}
        assert record["conversations"] == [{"from": "human", "value": example.prompt},
                                           {"from": "gpt", "value": example.answer}]
        names = record["image"] if isinstance(record["image"], list) else [record["image"]]
        assert len(names) == len(example.scenes) == record["conversations"][0]["value"].count("<image>")
        assert isinstance(record["image"], list) == (example.qtype == "compare")
        for name, scene in zip(names, example.scenes):
            with Image.open(f"{entry['root']}/{name}") as img:
                assert img.size == (scene.width, scene.height)
                assert img.convert("RGB").tobytes() == scene.render().tobytes()  # PNG is lossless
    assert dataset.type_counts(entry["annotation"]) == {t: 3 for t in QUESTION_TYPES}


def test_heldout_split_is_disjoint_and_cli_works(tmp_path, capsys):
    dataset.main(["--out", str(tmp_path / "h"), "--n", "7", "--seed", "0", "--split", "heldout"])
    assert "count_all 1" in capsys.readouterr().out
    dataset.export(tmp_path / "t", n=7, seed=0)
    train = read_jsonl(tmp_path / "t" / "shapes_train.jsonl")
    held = read_jsonl(tmp_path / "h" / "shapes_heldout.jsonl")
    assert {r["id"].split("-")[1] for r in train}.isdisjoint({r["id"].split("-")[1] for r in held})
    assert [r["conversations"] for r in train] != [r["conversations"] for r in held]
    assert json.loads((tmp_path / "h" / "shapes_heldout_meta.json").read_text())["shapes_heldout"]["length"] == 7


def test_describe_set_names_every_object_left_to_right(tmp_path):
    meta = json.loads(dataset.export(tmp_path, n=14, seed=7, describe=True).read_text())
    assert list(meta) == ["shapes_train", "shapes_train_describe"]
    assert meta["shapes_train_describe"]["root"] == meta["shapes_train"]["root"]
    described = read_jsonl(meta["shapes_train_describe"]["annotation"])
    assert len(described) == 14
    for seed, record in zip(range(7, 21), described):
        scene = make_example(seed).scenes[0]
        human, gpt = record["conversations"]
        assert human["value"] == "<image>\nDescribe the image." and isinstance(record["image"], str)
        count, _, objects = gpt["value"].partition(": ")
        named = objects.split(", ")
        assert count == f"{len(scene.shapes)} object{'s' if len(scene.shapes) > 1 else ''}" == \
            f"{len(named)} object{'s' if len(named) > 1 else ''}"
        assert sorted(named) == sorted(f"{s.color} {s.kind}" for s in scene.shapes)
        centers = sorted(((2 * s.x0 + s.size) / 2, f"{s.color} {s.kind}") for s in scene.shapes)
        by_name = {}
        for x, name in centers:
            by_name.setdefault(name, []).append(x)
        xs = [by_name[name].pop(0) for name in named]  # the x centers in the order the text names them
        assert xs == sorted(xs)  # left to right


def test_types_keeps_only_those_question_types_from_fresh_seeds(tmp_path, capsys):
    dataset.main(["--out", str(tmp_path), "--n", "5", "--seed", "70", "--types", "count_shape,compare",
                  "--name", "counting"])
    records = read_jsonl(tmp_path / "counting.jsonl")
    seeds = [int(r["id"].split("-")[1]) for r in records]
    assert seeds == [70, 76, 77, 83, 84]  # 70 % 7 == 0 (count_shape), 76 % 7 == 6 (compare), ...
    assert all(make_example(s).qtype in ("count_shape", "compare") for s in seeds)
    assert "compare 2, count_shape 3" in capsys.readouterr().out
    before = (tmp_path / "counting.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="unknown question types"):
        dataset.export(tmp_path, n=2, name="counting", types=("count_triangles",))
    assert (tmp_path / "counting.jsonl").read_bytes() == before  # a bad request leaves the old data alone
    with pytest.raises(SystemExit) as exit_:
        dataset.main(["--out", str(tmp_path), "--n", "2", "--types", "count_triangles", "--name", "counting"])
    assert exit_.value.code == 2 and "unknown question types" in capsys.readouterr().err


def test_worker_processes_write_the_same_files(tmp_path, capsys):
    """Images rendered by worker processes are byte for byte those of one process, in the same JSONL order."""
    one = dataset.export(tmp_path / "one", n=40, seed=3, describe=True, workers=1)
    two = dataset.export(tmp_path / "two", n=40, seed=3, describe=True, workers=2)  # a pool even on one CPU
    for name in ("shapes_train.jsonl", "shapes_train_describe.jsonl"):
        assert (one.parent / name).read_text() == (two.parent / name).read_text()
    files = sorted(p.name for p in (one.parent / "images").iterdir())
    assert len(files) > 40 and files == sorted(p.name for p in (two.parent / "images").iterdir())  # pairs: 2 each
    for f in files:
        assert (one.parent / "images" / f).read_bytes() == (two.parent / "images" / f).read_bytes()
    capsys.readouterr()
    for bad in ("0", "-3", str(available_cpus() + 1), "100000"):  # the last would fork 100,000 processes
        with pytest.raises(SystemExit):
            dataset.main(["--out", str(tmp_path / "bad"), "--n", "4", "--workers", bad])
        assert f"--workers must be between 1 and the {available_cpus()} CPUs" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything is written
