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

    def spy(self, tokenizer, pixel_values, question, generation_config=None, history=None, num_patches_list=None):
        seen.append((question, len(history or []), None if pixel_values is None else pixel_values.shape[0]))
        return original(self, tokenizer, pixel_values, question, generation_config, history, num_patches_list)
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
