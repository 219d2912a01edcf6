"""The tiny InternVL: a synthetic visual world (`world`), its tokenizer (`tokenizer`) and its training
data export (`dataset`). The model's configuration is the `tiny` preset in `presets.py`."""
