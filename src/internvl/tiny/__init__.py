"""The tiny InternVL: a synthetic visual world (`world`), its tokenizer (`tokenizer`), its training data export
(`dataset`), the recipe that trains it (`recipe`, `make tiny`) and the shipped result (`model/`), which is the
default model of `chat`, `serve`, `eval` and `make demo`. Its configuration is the `tiny` preset. Beside it
ships a tiny process reward model (`prm/`, trained by `prm_recipe`, `make tiny-prm`), the default verifier of
Best-of-N (`internvl.tts`)."""

from pathlib import Path

MODEL_DIR = Path(__file__).with_name("model")
EXAMPLES_DIR = Path(__file__).with_name("examples")
DEFAULT_MODEL = str(MODEL_DIR)
PRM_DIR = Path(__file__).with_name("prm")
DEFAULT_PRM = str(PRM_DIR)
