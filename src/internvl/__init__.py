"""internvl: run, convert and check InternVL models in plain PyTorch.

The official quick start works with only its imports changed::

    import internvl
    model, tokenizer = internvl.from_pretrained("OpenGVLab/InternVL3-1B")
    pixel_values = internvl.load_image("image.jpg", max_num=12)
    print(model.chat(tokenizer, pixel_values, "Describe the image.", dict(max_new_tokens=64)))
"""

from .chat import InternVLChatModel, from_pretrained
from .config import InternVLConfig, LLMConfig, VisionConfig
from .errors import InternVLError
from .models.internvl import InternVL
from .presets import PRESETS, get_preset
from .processing.image import load_image
from .processing.video import load_video

__version__ = "0.1.0"
__all__ = ["InternVL", "InternVLChatModel", "InternVLConfig", "InternVLError", "LLMConfig", "PRESETS",
           "VisionConfig", "from_pretrained", "get_preset", "load_image", "load_video"]
