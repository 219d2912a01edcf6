"""Named configurations: every official InternVL release, plus tiny presets for tests and demos.

Data, not logic: each entry is an `InternVLConfig`, the exact parameter count of the model it builds
(checked on the meta device by `tests/test_presets.py`) and the size its model card publishes. Values come
from the official `config.json` files and model-card tables (spec sections 1-2); the -MPO releases share
their base model's architecture. Phi-3-128k's LongRoPE factor lists are not recorded here: a real
checkpoint's config.json supplies them. Unknown names raise with the list of known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import InternVLConfig, LLMConfig, VisionConfig
from .errors import UnknownPresetError


@dataclass(frozen=True)
class Preset:
    config: InternVLConfig
    params: int  # exact parameter count of the built model
    published: str = ""  # size as the model card states it, e.g. "938M"


VIT_300M = VisionConfig()  # InternViT-300M-448px(-V2_5): LayerNorm, qkv bias
VIT_6B = VisionConfig(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
                      qkv_bias=False, qk_normalization=True, norm_type="rms_norm")  # InternViT-6B-448px-V1-5/V2_5


def _official(vision: VisionConfig, llm: LLMConfig, params: int, published: str, template: str = "internvl2_5"
              ) -> Preset:
    """The settings every official release shares: 448px tiles, 1-12 tiles + thumbnail, pixel shuffle v2."""
    return Preset(InternVLConfig(vision=vision, llm=llm, template=template, force_image_size=448),
                  params=params, published=published)


_TINY_VISION = VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            image_size=112, patch_size=14)
_TINY_LLM = LLMConfig(architecture="Qwen2ForCausalLM", vocab_size=268, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                      max_position_embeddings=4096, tie_word_embeddings=True)

PRESETS: dict[str, Preset] = {
    # 112px tiles -> 8x8 patches -> 16 tokens per tile; vocab sized for the byte-level test tokenizer
    "tiny-random": Preset(InternVLConfig(vision=_TINY_VISION, llm=_TINY_LLM, max_dynamic_patch=6), params=489_408),
    "InternVL-Chat-V1-5": _official(
        VIT_6B, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=6144, intermediate_size=16384,
        num_hidden_layers=48, num_attention_heads=48, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 3.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=25_514_186_112, published='25.5B', template='internlm2-chat'),
    "Mini-InternVL-Chat-2B-V1-5": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=2_205_754_368, published='2.21B', template='internlm2-chat'),
    "Mini-InternVL-Chat-4B-V1-5": _official(
        VIT_300M, LLMConfig(
        architecture='Phi3ForCausalLM', vocab_size=32020, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-05,
        rope_theta=10000.0, original_max_position_embeddings=4096, max_position_embeddings=131072,
        bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
        params=4_146_855_936, published='4.15B', template='phi3-chat'),
    "InternVL2-1B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151655, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-06,
        rope_theta=1000000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        params=938_158_976, published='938M', template='Hermes-2'),
    "InternVL2-2B": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=2_205_754_368, published='2.2B', template='internlm2-chat'),
    "InternVL2-4B": _official(
        VIT_300M, LLMConfig(
        architecture='Phi3ForCausalLM', vocab_size=32020, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-05,
        rope_theta=10000.0, original_max_position_embeddings=4096, max_position_embeddings=131072,
        bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
        params=4_146_855_936, published='4.15B', template='phi3-chat'),
    "InternVL2-8B": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=8_075_365_376, published='8.1B', template='internlm2-chat'),
    "InternVL2-26B": _official(
        VIT_6B, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=6144, intermediate_size=16384,
        num_hidden_layers=48, num_attention_heads=48, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 3.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=25_514_186_112, published='25.5B', template='internlm2-chat'),
    "InternVL2-40B": _official(
        VIT_6B, LLMConfig(
        architecture='LlamaForCausalLM', vocab_size=64007, hidden_size=7168, intermediate_size=20480,
        num_hidden_layers=60, num_attention_heads=56, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=5000000.0, max_position_embeddings=4096, bos_token_id=1, eos_token_id=7),
        params=40_068_684_160, published='40.1B', template='Hermes-2'),
    "InternVL2-Llama3-76B": _official(
        VIT_6B, LLMConfig(
        architecture='LlamaForCausalLM', vocab_size=128265, hidden_size=8192, intermediate_size=28672,
        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=500000.0, max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128003),
        params=76_262_358_400, published='76.3B', template='internlm2-chat'),
    "InternVL2_5-1B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-06,
        rope_theta=1000000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        params=938_193_024, published='938M'),
    "InternVL2_5-2B": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=2_205_754_368, published='2.21B'),
    "InternVL2_5-4B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=2048, intermediate_size=11008,
        num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-06,
        rope_theta=1000000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        params=3_712_637_952, published='3.71B'),
    "InternVL2_5-8B": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=8_075_365_376, published='8.08B'),
    "InternVL2_5-26B": _official(
        VIT_6B, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=92553, hidden_size=6144, intermediate_size=16384,
        num_hidden_layers=48, num_attention_heads=48, num_key_value_heads=8, rms_norm_eps=1e-05,
        rope_theta=50000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.5},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=25_514_186_112, published='25.5B'),
    "InternVL2_5-38B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=5120, intermediate_size=27648,
        num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-06,
        rope_theta=1000000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        params=38_388_164_992, published='38.4B'),
    "InternVL2_5-78B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=8192, intermediate_size=29568,
        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-06,
        rope_theta=1000000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
        params=78_408_318_336, published='78.4B'),
    "InternVL3-1B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=938_193_024, published='938M'),
    "InternVL3-2B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=2_088_957_440, published='2.09B'),
    "InternVL3-8B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=7_944_373_760, published='7.94B'),
    "InternVL3-9B": _official(
        VIT_300M, LLMConfig(
        architecture='InternLM2ForCausalLM', vocab_size=128512, hidden_size=4096, intermediate_size=10240,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=2, rms_norm_eps=1e-05,
        rope_theta=50000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 6.0},
        max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        params=9_141_824_512, published='9.14B'),
    "InternVL3-14B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=5120, intermediate_size=13824,
        num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=15_117_256_704, published='15.1B'),
    "InternVL3-38B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=5120, intermediate_size=27648,
        num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=38_388_164_992, published='38.4B'),
    "InternVL3-78B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen2ForCausalLM', vocab_size=151674, hidden_size=8192, intermediate_size=29568,
        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-06,
        rope_theta=1000000.0, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0},
        max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
        params=78_408_318_336, published='78.4B'),
    "InternVL3_5-1B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=1_060_897_792, published='1.1B'),
    "InternVL3_5-2B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=2_348_347_392, published='2.3B'),
    "InternVL3_5-4B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=2560, intermediate_size=9728,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=4_732_489_216, published='4.7B'),
    "InternVL3_5-8B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=8_528_318_464, published='8.5B'),
    "InternVL3_5-14B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=5120, intermediate_size=17408,
        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=15_119_523_840, published='15.1B'),
    "InternVL3_5-38B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen3ForCausalLM', vocab_size=151936, hidden_size=5120, intermediate_size=25600,
        num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645),
        params=38_390_405_504, published='38.4B'),
    "InternVL3_5-30B-A3B": _official(
        VIT_300M, LLMConfig(
        architecture='Qwen3MoeForCausalLM', vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
        norm_topk_prob=True),
        params=30_848_730_112, published='30.8B'),
    "InternVL3_5-241B-A28B": _official(
        VIT_6B, LLMConfig(
        architecture='Qwen3MoeForCausalLM', vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536,
        norm_topk_prob=True),
        params=240_699_370_368, published='240.7B'),
    "InternVL3_5-GPT-OSS-20B-A4B": _official(
        VIT_300M, LLMConfig(
        architecture='GptOssForCausalLM', vocab_size=201088, hidden_size=2880, intermediate_size=2880,
        num_hidden_layers=24, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
        rms_norm_eps=1e-05, rope_theta=150000.0, max_position_embeddings=131072, eos_token_id=200002,
        pad_token_id=199999, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=2880),
        params=21_238_874_304, published='21.2B', template='internvl3_5_gpt_oss'),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
