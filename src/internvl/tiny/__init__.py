"""The tiny InternVL: a synthetic visual world (`world`), its tokenizer (`tokenizer`), its training data export
(`dataset`), the recipe that trains it (`recipe`, `make tiny`) and the shipped result (`model/`), which is the
default model of `chat`, `serve`, `eval` and `make demo`. Its configuration is the `tiny` preset."""

from pathlib import Path

MODEL_DIR = Path(__file__).with_name("model")
EXAMPLES_DIR = Path(__file__).with_name("examples")
DEFAULT_MODEL = str(MODEL_DIR)
