"""`internvl train --v2pe-stride`: V2PE positions in training, recorded in the checkpoint, followed by chat."""

from __future__ import annotations

import json

from synthetic import make_dataset

from internvl.chat import from_pretrained
from internvl.cli import main


def test_train_flag_records_v2pe_and_chat_follows(tmp_path):
    meta = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-random", "--tokenizer", "byte", "--meta-path", str(meta), "--output-dir",
                 str(out), "--max-steps", "2", "--max-dynamic-patch", "1", "--no-progress", "--v2pe-stride", "0.5"]) == 0
    saved = json.loads((out / "checkpoint-2" / "config.json").read_text())
    assert saved["v2pe_stride"] == 0.5
    model, _ = from_pretrained(out / "checkpoint-2")
    assert model.config.v2pe_stride == 0.5
    assert main(["train", "--model", "tiny-random", "--tokenizer", "byte", "--meta-path", str(meta), "--output-dir",
                 str(tmp_path / "bad"), "--max-steps", "1", "--v2pe-stride", "3"]) == 2
