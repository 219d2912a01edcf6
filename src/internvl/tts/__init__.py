"""Test-time scaling: a process reward model over any InternVL checkpoint (VisualPRM step scoring), and
Best-of-N selection by PRM, ORM or majority vote (self-consistency).

    from internvl.tts import best_of_n, score_steps, select_best_response
"""

from .best_of_n import STRATEGIES, BestOfNResult, Verifier, best_of_n, extract_answer, majority_index
from .prm import PRM_SYSTEM_PROMPT, aggregate, score_steps, select_best_response, split_response

__all__ = ["PRM_SYSTEM_PROMPT", "STRATEGIES", "BestOfNResult", "Verifier", "aggregate", "best_of_n", "extract_answer",
           "majority_index", "score_steps", "select_best_response", "split_response"]
