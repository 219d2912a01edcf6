"""`internvl eval run` end to end on TSVs made here with a random tiny model: well-formed predictions, the same
answers batched as one at a time, resume after kill -9 without repeating rows, scores equal to `eval score`,
failures recorded, and malformed files refused before any model work."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from internvl.checkpoint.loader import save_checkpoint
from internvl.cli import main
from internvl.errors import ConfigError
from internvl.eval.generate import build_request, engine_generate
from internvl.eval.harness import RunConfig, run
from internvl.eval.predictions import PredictionLog
from internvl.eval.tsv import encode_image, read_benchmark, write_tsv
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    """A random tiny-random model (fp32, so batched and single greedy decoding agree) and a byte tokenizer."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = InternVL(PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>")))
    model.init_weights(std=0.5)
    return model.eval(), tok


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    model, tok = tiny
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny", "official")
    tok.save_pretrained(path)
    return path


def image(seed: int, size=(150, 90)) -> Image.Image:
    img = Image.new("RGB", size, (seed * 40 % 256, 120, 200))
    for x in range(0, size[0], 9):
        img.putpixel((x, (x * seed) % size[1]), (255, 255, 0))
    return img


def make_files(directory: Path, n_mcq: int = 4) -> list[Path]:
    """An MCQ set (hint, options, categories, splits, references, a two-image row), a Y/N set, a VQA set read by
    image_path."""
    imgs = [encode_image(image(i)) for i in range(3)]
    mcq = [{"index": i, "image": imgs[i % 3] if i < 3 else str(i % 3), "question": f"Which color {i}?",
            "hint": "Look closely." if i % 2 else "", "A": "red", "B": "blue", "C": "green" if i % 3 else "",
            "answer": "AB"[i % 2], "category": ["hue", "tone"][i % 2], "l2-category": "color",
            "split": "dev"} for i in range(n_mcq)]
    mcq.append({"index": 100, "image": repr(imgs[:2]), "question": "Which image is bluer?", "A": "1", "B": "2",
                "answer": "A", "category": "compare", "l2-category": "color", "split": "dev"})
    paths = [write_tsv(directory / "Colors_MCQ.tsv", ["index", "image", "question", "hint", "A", "B", "C", "answer",
                                                        "category", "l2-category", "split"], mcq)]
    paths.append(write_tsv(directory / "Colors_YN.tsv", ["index", "image", "question", "answer", "category"],
                           [{"index": i, "image": imgs[i % 3] if i < 3 else str(i % 3), "question": "Is it red?",
                             "answer": "Yes" if i % 2 else "No", "category": "c"} for i in range(4)]))
    (directory / "imgs").mkdir(exist_ok=True)
    image(7, (60, 200)).save(directory / "imgs" / "tall.png")
    paths.append(write_tsv(directory / "Colors_VQA.tsv", ["index", "image_path", "question", "answer"],
                           [{"index": i, "image_path": "imgs/tall.png", "question": f"What {i}?",
                             "answer": "blue"} for i in range(3)]))
    return paths


FAST = dict(batch_size=3, max_new_tokens=4, max_dynamic_patch=2, progress=False)


def test_run_writes_predictions_and_scores_equal_eval_score(tiny, tmp_path, capsys):
    model, tok = tiny
    files = make_files(tmp_path)
    out = tmp_path / "run"
    summary = run(RunConfig(data=[str(f) for f in files], out=str(out), label="random", **FAST), model, tok)
    assert set(summary["datasets"]) == {"Colors_MCQ", "Colors_YN", "Colors_VQA"}
    for path in files:
        bench = read_benchmark(path)
        log = out / bench.name / "predictions.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert sorted(r["index"] for r in lines) == sorted(r.index for r in bench.rows)  # each row exactly once
        assert all(set(r) == {"index", "prediction"} and isinstance(r["prediction"], str) for r in lines)
        ds = summary["datasets"][bench.name]
        assert (ds["generated"], ds["resumed"], ds["failed"], ds["scored"]) == (len(bench.rows), 0, 0, len(bench.rows))
        assert (out / bench.name / "predictions.tsv").read_text().splitlines()[0].endswith("\tprediction")
        assert "image\t" not in (out / bench.name / "predictions.tsv").read_text().splitlines()[0]
        # the same predictions scored without a model: identical tables and headline
        score_out = tmp_path / "score" / bench.name
        assert main(["eval", "score", "--data", str(path), "--predictions", str(log), "--out", str(score_out)]) == 0
        scored = json.loads((score_out / "summary.json").read_text())["datasets"][bench.name]
        assert scored["table"] == ds["table"] and scored["headline"] == ds["headline"]
        # ... and from the VLMEvalKit-format file the run wrote
        assert main(["eval", "score", "--data", str(path), "--predictions",
                     str(out / bench.name / "predictions.tsv")]) == 0
    assert summary["datasets"]["Colors_MCQ"]["kind"] == "mcq" and summary["datasets"]["Colors_YN"]["rating"] == "yorn"
    assert {p.name for p in out.iterdir()} >= {"summary.json", "categories.csv", "scores.png"}
    assert json.loads((out / "summary.json").read_text())["datasets"]["Colors_VQA"]["metric"] == "exact"
    capsys.readouterr()


def test_batched_answers_equal_one_at_a_time(tiny, tmp_path):
    model, tok = tiny
    bench = read_benchmark(make_files(tmp_path, n_mcq=6)[0])
    requests = [build_request(bench, row, "mcq", model, tok, max_dynamic_patch=2, max_new_tokens=6)
                for row in bench.rows]
    assert [r.question.count("<image>") for r in requests] == [len(row.images) for row in bench.rows]
    assert all(r.pixel_values.shape[0] == sum(r.num_patches_list) for r in requests)
    assert requests[1].question == ("<image>\nLook closely.\nWhich color 1?\nA. red\nB. blue\nC. green\n"
                                    "Answer with the option's letter from the given choices directly.")
    assert requests[-1].question.startswith("Image-1: <image>\nImage-2: <image>\nWhich image is bluer?")
    batched = {k: t for k, t, _ in engine_generate(model, tok, batch_size=4)(requests)}
    single = {k: t for k, t, _ in engine_generate(model, tok, batch_size=1)(requests)}
    assert batched == single and len(batched) == len(requests)
    assert len(set(batched.values())) > 1  # the random model does answer differently


def test_a_given_generate_function_replaces_the_engine(tiny, tmp_path):
    """The hook for Best-of-N: it receives every request and returns one answer per row."""
    model, tok = tiny
    seen = []

    def always_a(requests):
        for req in requests:
            seen.append(req)
            yield req.key, "A", None
    summary = run(RunConfig(data=[str(make_files(tmp_path)[0])], out=str(tmp_path / "o"), **FAST), model, tok,
                  generate=always_a)
    assert len(seen) == 5 and all(r.prompt_ids and r.pixel_values is not None for r in seen)
    table = summary["datasets"]["Colors_MCQ"]["table"]
    assert table[0]["acc"] == pytest.approx(60.0)  # answers A, B, A, B, A: three are A


def test_failed_rows_are_logged_and_retried(tiny, tmp_path):
    model, tok = tiny
    buf = io.BytesIO()
    image(1, (300, 300)).save(buf, "JPEG")
    cut = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 3]).decode()
    path = write_tsv(tmp_path / "Broken.tsv", ["index", "image", "question", "answer"],
                     [{"index": 1, "image": encode_image(image(1)), "question": "Q?", "answer": "x"},
                      {"index": 2, "image": cut, "question": "Q?", "answer": "x"},
                      {"index": 3, "image": "1", "question": "Q" * 5000, "answer": "x"}])  # longer than the context
    cfg = RunConfig(data=[str(path)], out=str(tmp_path / "o"), **FAST)
    ds = run(cfg, model, tok)["datasets"]["Broken"]
    assert (ds["generated"], ds["failed"]) == (3, 2)
    assert "row 2 (index 2)" in ds["failures"][0] and "fill the model's context" in ds["failures"][1]
    again = run(cfg, model, tok)["datasets"]["Broken"]
    assert (again["resumed"], again["generated"], again["failed"]) == (1, 2, 2)  # only the failed rows again
    log = PredictionLog(tmp_path / "o" / "Broken" / "predictions.jsonl").load()
    assert log["2"]["error"] and log["2"]["prediction"] == ""


def test_a_file_without_answers_gets_predictions_only(tiny, tmp_path, capsys):
    model, tok = tiny
    path = write_tsv(tmp_path / "Test_Split.tsv", ["index", "image", "question"],
                     [{"index": i, "image": encode_image(image(i)), "question": "What?"} for i in range(2)])
    summary = run(RunConfig(data=[str(path)], out=str(tmp_path / "o"), **FAST), model, tok)
    assert summary["datasets"] == {} and summary["unscored"]["Test_Split"]["generated"] == 2
    assert (tmp_path / "o" / "Test_Split" / "predictions.tsv").read_text().count("\n") == 3
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["unscored"]["Test_Split"]["rows"] == 2


def test_resuming_another_run_is_refused_unless_overwrite(tiny, tmp_path):
    model, tok = tiny
    files = [str(make_files(tmp_path)[1])]
    run(RunConfig(data=files, out=str(tmp_path / "o"), **FAST), model, tok)
    with pytest.raises(ConfigError,
                       match=r"holds predictions of another run \(max_new_tokens: 4, now 5\).*--overwrite"):
        run(RunConfig(data=files, out=str(tmp_path / "o"), **{**FAST, "max_new_tokens": 5}), model, tok)
    ds = run(RunConfig(data=files, out=str(tmp_path / "o"), overwrite=True, **{**FAST, "max_new_tokens": 5}),
             model, tok)["datasets"]["Colors_YN"]
    assert (ds["generated"], ds["resumed"]) == (4, 0)
    ds = run(RunConfig(data=files, out=str(tmp_path / "o"), **{**FAST, "max_new_tokens": 5}), model, tok)
    assert (ds["datasets"]["Colors_YN"]["generated"], ds["datasets"]["Colors_YN"]["resumed"]) == (0, 4)


def test_malformed_data_fails_before_any_model_work(tmp_path, capsys):
    good = make_files(tmp_path)[0]
    bad = tmp_path / "Bad.tsv"
    bad.write_text("index\timage\tquestion\n1\t" + "abc" * 30 + "\tQ\n")
    code = main(["eval", "run", "--data", str(good), "--data", str(bad), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "Bad.tsv: row 1 (index 1), column 'image': invalid base64" in err
    (tmp_path / "NoQuestion.tsv").write_text("index\timage\n1\tx\n")
    assert main(["eval", "run", "--data", str(tmp_path / "NoQuestion.tsv")]) == 2
    assert "missing column 'question'" in capsys.readouterr().err
    assert main(["eval", "run", "--data", str(good), "--data", str(good), "--out", str(tmp_path / "o")]) == 2
    assert "both named 'Colors_MCQ'" in capsys.readouterr().err
    assert main(["eval", "run", "--data", str(good), "--batch-size", "0"]) == 2


def test_eval_commands_cannot_be_task_names():
    from internvl.eval import tasks
    with pytest.raises(ConfigError, match="'run' is an `internvl eval` command"):
        tasks.register("run", object)


@pytest.mark.slow
def test_resume_after_kill_9_does_not_repeat_rows(checkpoint, tmp_path):
    """A run killed with SIGKILL mid-way, then run again: the first run's lines stay as they were, every row is
    answered exactly once, and the second run generates only what the first did not finish."""
    img = encode_image(image(3))
    n = 40
    data = write_tsv(tmp_path / "Many.tsv", ["index", "image", "question", "answer"],
                     [{"index": i, "image": img if i == 0 else "0", "question": f"Question {i}?", "answer": "x"}
                      for i in range(n)])
    out = tmp_path / "out"
    log = out / "Many" / "predictions.jsonl"
    cmd = [sys.executable, "-m", "internvl", "eval", "run", "--data", str(data), "--model", str(checkpoint), "--out",
           str(out), "--batch-size", "1", "--max-new-tokens", "16", "--max-dynamic-patch", "1", "--dtype", "fp32",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().count("\n") >= 5):
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        assert time.monotonic() < deadline, "no predictions after 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stderr.close()
    before = log.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    kept = len(complete.splitlines())
    assert 5 <= kept < n, f"killed after {kept} of {n} rows"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    after = log.read_bytes()
    assert after.startswith(complete)  # nothing finished was rewritten
    indexes = [json.loads(line)["index"] for line in after.decode().splitlines()]
    assert sorted(indexes, key=int) == [str(i) for i in range(n)]  # every row once
    summary = json.loads((out / "summary.json").read_text())["datasets"]["Many"]
    assert summary["resumed"] == kept and summary["generated"] == n - kept
    assert f"{n - kept} rows generated, {kept} resumed" in second.stdout
