"""`eval export-shapes`: the tiny world as VLMEvalKit files that read back, score as intended, and repeat exactly."""

from __future__ import annotations

from internvl.cli import main
from internvl.eval.export import FILES, export_shapes
from internvl.eval.scoring import infer_kind, infer_metric, is_circular, score
from internvl.eval.tsv import read_benchmark
from internvl.tiny import world


def test_export_reads_back_as_the_three_kinds(tmp_path):
    paths = export_shapes(tmp_path, n=14, seed=3)
    assert [p.name for p in paths] == list(FILES)
    mcq, yn, vqa = (read_benchmark(p) for p in paths)

    assert infer_kind(mcq) == "mcq" and is_circular(mcq)
    groups = {}
    for row in mcq.rows:
        groups.setdefault(row.get("g_index"), []).append(row)
    assert len(groups) == 14 and "exists" not in {r.get("category") for r in mcq.rows}
    for g, rows in groups.items():
        options = [c for c in "ABCD" if rows[0].get(c)]
        assert len(rows) == len(options)  # one row per rotation
        assert len({r.get(r.get("answer")) for r in rows}) == 1  # the answer's text follows the rotation
        assert {r.images[0].key for r in rows} == {rows[0].images[0].key}  # copies share the original's image
    compare = [r for r in mcq.rows if r.get("category") == "compare"]
    assert compare and all(len(r.images) == 2 for r in compare)

    assert infer_kind(yn) == "yorn" and {r.get("answer") for r in yn.rows} == {"Yes", "No"}
    assert all(r.get("question").startswith("Is there a ") for r in yn.rows)
    assert infer_kind(vqa) == "vqa" and infer_metric(vqa) == "exact"
    assert {r.get("category") for r in vqa.rows} == set(world.QUESTION_TYPES)
    for row in vqa.rows[:3]:  # held-out world examples, images included
        assert row.get("answer") in world.answer_texts()
        assert row.images[0].load().size[0] >= world.MIN_SIDE


def test_right_answers_score_full_marks(tmp_path):
    mcq, yn, vqa = (read_benchmark(p) for p in export_shapes(tmp_path, n=7))
    assert score(mcq, {r.index: r.get(r.get("answer")) for r in mcq.rows}).table[0]["acc"] == 100.0
    assert score(yn, {r.index: r.get("answer").lower() for r in yn.rows}).table[0]["acc"] == 100.0
    assert score(vqa, {r.index: r.get("answer") for r in vqa.rows}).table[0]["exact"] == 100.0


def test_export_is_deterministic_and_a_cli_command(tmp_path, capsys):
    assert main(["eval", "export-shapes", "--out", str(tmp_path / "a"), "--n", "5"]) == 0
    assert "internvl eval run --data" in capsys.readouterr().out
    export_shapes(tmp_path / "b", n=5)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["eval", "export-shapes", "--out", str(tmp_path / "c"), "--n", "0"]) == 2
