"""Evaluation: tasks (`tasks.py` protocol + registry; `shapes.py`), answer scoring (`metrics.py`), the
batched runner (`runner.py`) and its table and chart (`report.py`). `internvl eval TASK` is the command."""
