"""The `internvl` command: every subcommand has help; convert/info/chat/demo work; bad input exits 2 clearly."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from PIL import Image

from internvl.checkpoint.loader import save_checkpoint
from internvl.cli import COMMANDS, build_parser, main
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    path = save_checkpoint(InternVL(cfg), tmp_path_factory.mktemp("tiny") / "ckpt", "official")
    tok.save_pretrained(path)
    return path


def test_info_on_preset_and_checkpoint(tiny, capsys):
    assert main(["info", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert f"{PRESETS['tiny-random'].params:,}" in out
    assert main(["info", str(tiny)]) == 0
    assert "official layout" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["InternVL3_5-GPT-OSS-20B-A4B", "Intern-S1", "Intern-S1-mini"])
def test_info_shows_the_gpt_oss_and_intern_s1_presets(name, capsys):
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    assert f"{PRESETS[name].params:,}" in out
    assert ("sliding window 128 on 12 of 24 layers" in out) == ("GPT-OSS" in name)


def test_chat_no_thinking(tiny, tmp_path, capsys):
    """`--no-thinking` drops Intern-S1's thinking system prompt; a template without thinking says so (exit 2)."""
    from internvl.chat import from_pretrained
    assert main(["chat", "--model", str(tiny), "--no-thinking", "hi"]) == 2
    assert "has no thinking mode" in capsys.readouterr().err
    cfg = json.loads((tiny / "config.json").read_text())
    s1 = tmp_path / "s1"
    shutil.copytree(tiny, s1)
    (s1 / "config.json").write_text(json.dumps({**cfg, "template": "interns1"}))
    assert main(["chat", "--model", str(s1), "--no-thinking", "--max-new-tokens", "2", "hi"]) == 0
    model, _ = from_pretrained(s1)
    assert model._template().system_message.startswith("You are an expert reasoner")
    model.enable_thinking = False
    assert model._template().system_message == ""


def test_convert_both_ways(tiny, tmp_path, capsys):
    assert main(["convert", str(tiny), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "official"]) == 0
    assert (tmp_path / "back" / "tokenizer.json").exists()


def test_chat_one_shot_and_bad_image(tiny, tmp_path, capsys):
    Image.new("RGB", (300, 100), "blue").save(tmp_path / "x.png")
    assert main(["chat", "--model", str(tiny), "--image", str(tmp_path / "x.png"), "--max-new-tokens", "5",
                 "What?"]) == 0
    capsys.readouterr()
    assert main(["chat", "--model", str(tiny), "--image", str(tmp_path / "missing.png"), "What?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.png" in err
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    assert main(["chat", "--model", str(tiny), "--image", str(tmp_path / "bad.png"), "What?"]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "nope"), "hi"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_demo_answers_the_example_questions(capsys):
    from internvl.tiny.examples import load_examples
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    examples = load_examples()
    assert all(q.question in out for q in examples)
    assert re.search(rf"^\d+/{len(examples)} right", out, re.M)


def test_repl_multi_turn_images_reset_and_bad_file(tiny, tmp_path, capsys, monkeypatch):
    import io
    Image.new("RGB", (224, 112), "green").save(tmp_path / "g.png")
    script = "\n".join([f"/image {tmp_path / 'g.png'}", f"/image {tmp_path / 'g.png'}", "Compare them.",
                        "And again?", f"/image {tmp_path / 'nope.png'}", "/bogus", "/reset", "Plain text.", "/exit",
                        "never read"]) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    from internvl import chat as chat_module
    seen = []
    original = chat_module.InternVLChatModel.stream_chat

    def spy(self, tokenizer, pixel_values, question, generation_config=None, history=None, num_patches_list=None,
            **kw):
        seen.append((question, len(history or []), None if pixel_values is None else pixel_values.shape[0]))
        return original(self, tokenizer, pixel_values, question, generation_config, history, num_patches_list, **kw)
    monkeypatch.setattr(chat_module.InternVLChatModel, "stream_chat", spy)
    assert main(["chat", "--model", str(tiny), "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "nope.png" in err and "unknown command /bogus" in err and "reset" in err
    assert seen[0] == ("Image-1: <image>\nImage-2: <image>\nCompare them.", 0, 6)  # 2 images x (2 tiles + thumb)
    assert seen[1] == ("And again?", 1, 6)  # history kept, images of the conversation stay
    assert seen[2] == ("Plain text.", 0, None)  # after /reset
    assert len(seen) == 3  # /exit stopped the loop


def test_video_one_shot(tiny, tmp_path, capsys):
    av = pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            out.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (64, 48), (20 * i, 0, 0)))))
        out.mux(stream.encode())
    assert main(["chat", "--model", str(tiny), "--video", str(path), "--num-frames", "3", "--max-new-tokens", "3",
                 "What happens?"]) == 0
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    assert main(["chat", "--model", str(tiny), "--video", str(tmp_path / "bad.mp4"), "x"]) == 2
    assert "bad.mp4" in capsys.readouterr().err


# ---- hostile command lines: exit code 2 and one line, never a traceback; no command destroys a user's files

def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as e:  # argparse refuses before any command runs
        return e.code


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, words", [
    (["chat", "--max-new-tokens", "-5", "hi"], "argument --max-new-tokens: must be >= 1, got -5"),
    (["chat", "--temperature", "-1", "hi"], "argument --temperature: must be >= 0"),
    (["chat", "--temperature", "nan", "hi"], "argument --temperature: must be a finite number"),
    (["chat", "--top-p", "0", "hi"], "argument --top-p: must be in (0, 1]"),
    (["chat", "--max-tiles", "0", "hi"], "argument --max-tiles: must be >= 1"),
    (["chat", "--num-frames", "x", "hi"], "expected an integer, got 'x'"),
    (["chat", "--device", "gpu9", "hi"], "argument --device"),
    (["chat", "--dtype", "fp64", "hi"], "argument --dtype"),
    (["eval", "shapes", "--n", "0"], "argument --n: must be >= 1"),
    (["eval", "shapes", "--batch-size", "-1"], "argument --batch-size"),
    (["serve", "--port", "99999"], "--port must be in 0..65535, got 99999"),
    (["serve", "--allowed-local-media-path", "/nonexistent"], "/nonexistent: no such directory"),
    (["serve", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["serve", "--media-timeout", "nan"], "--media-timeout must be a number of seconds > 0"),
    (["serve", "--dtype", "fp64"], "--dtype must be auto or one of"),
    (["serve", "--port", "http"], "invalid int value"),
    (["convert", "a"], "the following arguments are required"),
    (["train", "--model", "tiny-random", "--meta-path", "m.json", "--output-dir", "o", "--lr", "nan"],
     "--lr must be a finite number"),
    (["bogus"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(args, words, capsys):
    assert run_cli(args) == 2
    err = one_line(capsys)
    assert words in err, err
    assert not capsys.readouterr().out  # no banner, nothing started


def test_serve_on_a_port_in_use_says_so_before_loading(capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert run_cli(["serve", "--model", "/nonexistent", "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in one_line(capsys)  # before the model path was even looked at


def test_chat_with_a_vanishing_temperature_and_a_fifo_image(tiny, tmp_path, capsys):
    import os
    assert run_cli(["chat", "--model", str(tiny), "--temperature", "1e-300", "--max-new-tokens", "3", "hi"]) == 0
    capsys.readouterr()
    os.mkfifo(tmp_path / "fifo.png")
    assert run_cli(["chat", "--model", str(tiny), "--image", str(tmp_path / "fifo.png"), "hi"]) == 2
    assert "is a FIFO, not a regular file" in one_line(capsys)


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    out = tmp_path / "empty"
    args = ["train", "--model", "tiny-random", "--tokenizer", "byte", "--meta-path", str(tmp_path / "m.json"),
            "--output-dir", str(out), "--resume", "--no-progress"]
    assert run_cli(args) == 2
    assert "holds no complete checkpoint to resume from" in one_line(capsys)
    assert not out.exists()  # nothing was started


def test_convert_never_destroys_a_users_files(tiny, tmp_path, capsys):
    from internvl.checkpoint.loader import read_config
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    assert run_cli(["convert", str(tiny), str(dst), "--to", "hf"]) == 2
    assert "is not empty (notes.txt)" in one_line(capsys) and sorted(os_listdir(dst)) == ["notes.txt"]
    (tmp_path / "file").write_text("also mine")
    assert run_cli(["convert", str(tiny), str(tmp_path / "file"), "--to", "hf"]) == 2
    assert "is an existing file" in one_line(capsys) and (tmp_path / "file").read_text() == "also mine"
    # --overwrite writes the checkpoint's files and touches nothing else; stale shards of an old save go
    (dst / "sub").mkdir()
    (dst / "sub" / "keep.txt").write_text("kept")
    for stale in ("model-00001-of-00002.safetensors", "model.safetensors.index.json"):
        (dst / stale).write_text("old")
    assert run_cli(["convert", str(tiny), str(dst), "--to", "hf", "--overwrite"]) == 0
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "sub" / "keep.txt").read_text() == "kept"
    assert not (dst / "model.safetensors.index.json").exists() and read_config(dst)[1] == "hf"
    assert run_cli(["convert", str(tiny), str(tmp_path / "file"), "--to", "official", "--overwrite"]) == 0
    assert read_config(tmp_path / "file")[1] == "official"
    # in place, both ways: the model card stays
    (dst / "README.md").write_text("# card")
    for layout in ("official", "hf"):
        assert run_cli(["convert", str(dst), str(dst), "--to", layout, "--overwrite"]) == 0
        assert read_config(dst)[1] == layout and (dst / "README.md").read_text() == "# card"
    capsys.readouterr()


def os_listdir(path) -> list[str]:
    import os
    return os.listdir(path)
