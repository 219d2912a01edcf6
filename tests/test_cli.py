"""The `internvl` command: every subcommand has help; convert/info/chat/demo work; bad input exits 2 clearly."""

from __future__ import annotations

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


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "tiles" in out and "A:" in out
