"""Step-wise answers of the tiny world: each step follows from the scene, the last is the answer, and the
exported data is official-format SFT data whose supervised text is exactly the step-wise answer."""

from __future__ import annotations

import json

import pytest

from internvl.processing.tokenizer import byte_tokenizer
from internvl.tiny import steps
from internvl.tiny.world import QUESTION_TYPES, describe, make_example
from internvl.train.data import SFTDataset
from internvl.train.records import IGNORE_INDEX, DataConfig
from internvl.tts.best_of_n import extract_answer
from internvl.tts.prm import split_response


def _objects(listing: str) -> list[str]:
    items = listing.split(": ", 1)[1]
    return [] if items == "none" else items.split(", ")


@pytest.mark.parametrize("seed", range(70))
def test_steps_follow_from_the_scene(seed):
    ex = make_example(seed)
    answer = steps.step_answer(ex)
    parts = split_response(answer)
    assert parts == steps.solution_steps(ex)
    assert parts[-1] == f"Answer: {ex.answer}" and extract_answer(answer) == ex.answer
    assert steps.step_question(ex) == ex.prompt + "\nAnswer step by step."
    scene = ex.scenes[0]
    if ex.qtype == "compare":
        kind = ex.question.split()[4].rstrip("?")[:-1]
        a, b = (s.count(kind=kind) for s in ex.scenes)
        assert parts == [f"Image 1: {describe(ex.scenes[0])}", f"Image 2: {describe(ex.scenes[1])}",
                         f"{kind}s: {a} in image 1, {b} in image 2", f"Answer: {ex.answer}"]
        return
    assert parts[0] == describe(scene)
    if ex.qtype == "count_all":
        assert len(parts) == 2
        return
    listed = _objects(parts[1])
    described = _objects(parts[0])
    assert all(o in described for o in listed)  # the relevant objects, in the description's order
    if ex.qtype in ("count_shape", "count_color"):
        assert str(len(listed)) == ex.answer
    elif ex.qtype == "exists":
        assert ("yes" if listed else "no") == ex.answer
    elif ex.qtype == "color_of_shape":
        assert len(listed) == 1 and listed[0].split()[0] == ex.answer
    else:  # shape_of_color
        assert len(listed) == 1 and listed[0].split()[1] == ex.answer


def test_every_question_type_has_its_middle_step():
    heads = {}
    for seed in range(7):
        ex = make_example(seed)
        heads[ex.qtype] = [p.split(":")[0] for p in steps.solution_steps(ex)]
    assert set(heads) == set(QUESTION_TYPES)
    assert heads["count_all"][1] == "Answer" and heads["compare"][:2] == ["Image 1", "Image 2"]


def test_export_is_official_sft_data_supervising_the_steps(tmp_path):
    meta = steps.export(tmp_path, 14, seed=5)
    specs = json.loads(meta.read_text())
    assert set(specs) == {"shapes_steps_steps", "shapes_steps_words", "shapes_steps_describe"}
    assert all(v["length"] == 14 for v in specs.values())
    tok = byte_tokenizer()
    ds = SFTDataset(meta, tok, DataConfig(template="internvl2_5", image_size=96, num_image_token=16,
                                          max_dynamic_patch=1))
    assert len(ds) == 42
    for i in range(14):  # the step-wise dataset comes first
        sample, ex = ds[i], make_example(5 + i)
        supervised = tok.decode(sample.input_ids[sample.labels != IGNORE_INDEX].tolist())
        assert supervised == steps.step_answer(ex) + "<|im_end|>"
        assert steps.STEP_INSTRUCTION in tok.decode(sample.input_ids.tolist())
    assert tok.decode(ds[14].input_ids[ds[14].labels != IGNORE_INDEX].tolist()) == make_example(5).answer + "<|im_end|>"
