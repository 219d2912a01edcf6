"""Named configurations: every official InternVL release, plus tiny presets for tests and demos.

Data, not logic: each entry is an `InternVLConfig`, the exact parameter count of the model it builds
(checked on the meta device by `tests/test_presets.py`) and the size its model card publishes. Values come
from the official `config.json` files and model-card tables (spec sections 1-2); the -MPO releases share
their base model's architecture. Phi-3-128k's LongRoPE factor lists are not recorded here: a real
checkpoint's config.json supplies them. Unknown names raise with the list of known ones.
"""

from __future__ import annotations

import dataclasses
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


# ---- LLM backbones, as InternVL's llm_config records them (InternVL grows vocabularies and unties heads) ----
_QWEN = dict(architecture="Qwen2ForCausalLM", vocab_size=151674, rope_theta=1e6, max_position_embeddings=32768,
             bos_token_id=151643, eos_token_id=151645)
_INTERNLM2 = dict(architecture="InternLM2ForCausalLM", vocab_size=92553, rms_norm_eps=1e-5, rope_theta=1e6,
                  max_position_embeddings=32768, bos_token_id=1, eos_token_id=2, pad_token_id=2)
_QWEN3 = dict(architecture="Qwen3ForCausalLM", vocab_size=151936, head_dim=128, rope_theta=1e6,
              max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645)


def _dims(hidden: int, inter: int, layers: int, heads: int, kv: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv)


def _ntk(factor: float) -> dict:
    return {"rope_type": "dynamic", "factor": factor}


QWEN2_0_5B = LLMConfig(**{**_QWEN, "vocab_size": 151655}, **_dims(896, 4864, 24, 14, 2))
QWEN2_5_0_5B = LLMConfig(**_QWEN, **_dims(896, 4864, 24, 14, 2))
QWEN2_5_1_5B = LLMConfig(**_QWEN, **_dims(1536, 8960, 28, 12, 2))
QWEN2_5_3B = LLMConfig(**_QWEN, **_dims(2048, 11008, 36, 16, 2))
QWEN2_5_7B = LLMConfig(**_QWEN, **_dims(3584, 18944, 28, 28, 4))
QWEN2_5_14B = LLMConfig(**_QWEN, **_dims(5120, 13824, 48, 40, 8))
QWEN2_5_32B = LLMConfig(**_QWEN, **_dims(5120, 27648, 64, 40, 8))
QWEN2_5_72B = LLMConfig(**_QWEN, **_dims(8192, 29568, 80, 64, 8))
INTERNLM2_1_8B = LLMConfig(**_INTERNLM2, **_dims(2048, 8192, 24, 16, 8), rope_scaling=_ntk(2.0))
INTERNLM2_5_7B = LLMConfig(**_INTERNLM2, **_dims(4096, 14336, 32, 32, 8), rope_scaling=_ntk(2.0))
INTERNLM2_20B = LLMConfig(**_INTERNLM2, **_dims(6144, 16384, 48, 48, 8), rope_scaling=_ntk(3.0))
INTERNLM2_5_20B = dataclasses.replace(INTERNLM2_20B, rope_theta=5e7, rope_scaling=_ntk(2.5))
# InternLM3-8B as InternVL3-9B stores it: InternLM2 naming (packed wqkv), InternLM3 sizes and vocabulary
INTERNLM3_8B = LLMConfig(**{**_INTERNLM2, "vocab_size": 128512, "rope_theta": 5e7},
                         **_dims(4096, 10240, 48, 32, 2), rope_scaling=_ntk(6.0))
PHI3_MINI_128K = LLMConfig(architecture="Phi3ForCausalLM", vocab_size=32020, **_dims(3072, 8192, 32, 32, 32),
                           rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=131072,
                           original_max_position_embeddings=4096, bos_token_id=1, eos_token_id=32000,
                           pad_token_id=32000)
YI_34B = LLMConfig(architecture="LlamaForCausalLM", vocab_size=64007, **_dims(7168, 20480, 60, 56, 8),
                   rms_norm_eps=1e-5, rope_theta=5e6, max_position_embeddings=4096, bos_token_id=1, eos_token_id=7)
LLAMA3_70B = LLMConfig(architecture="LlamaForCausalLM", vocab_size=128265, **_dims(8192, 28672, 80, 64, 8),
                       rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=8192, bos_token_id=128000,
                       eos_token_id=128003)
QWEN3_0_6B = LLMConfig(**_QWEN3, **_dims(1024, 3072, 28, 16, 8))
QWEN3_1_7B = LLMConfig(**_QWEN3, **_dims(2048, 6144, 28, 16, 8))
QWEN3_4B = LLMConfig(**_QWEN3, **_dims(2560, 9728, 36, 32, 8))
QWEN3_8B = LLMConfig(**_QWEN3, **_dims(4096, 12288, 36, 32, 8))
QWEN3_14B = LLMConfig(**_QWEN3, **_dims(5120, 17408, 40, 40, 8))
QWEN3_32B = LLMConfig(**_QWEN3, **_dims(5120, 25600, 64, 64, 8))
QWEN3_30B_A3B = LLMConfig(**{**_QWEN3, "architecture": "Qwen3MoeForCausalLM"}, **_dims(2048, 6144, 48, 32, 4),
                          num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768)
QWEN3_235B_A22B = LLMConfig(**{**_QWEN3, "architecture": "Qwen3MoeForCausalLM"}, **_dims(4096, 12288, 94, 64, 4),
                            num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536)
# gpt-oss-20b: layers alternate sliding (128 keys, first) and full attention; YaRN x32 without truncation
GPT_OSS_20B = LLMConfig(architecture="GptOssForCausalLM", vocab_size=201088, **_dims(2880, 2880, 24, 64, 8),
                        head_dim=64, rms_norm_eps=1e-5, rope_theta=150000.0, max_position_embeddings=131072,
                        rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                      "truncate": False, "original_max_position_embeddings": 4096},
                        sliding_window=128, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=2880,
                        eos_token_id=200002, pad_token_id=199999)


def _intern_s1(vision: VisionConfig, llm: LLMConfig, params: int, published: str) -> Preset:
    """Intern-S1 / -mini (`internlm/Intern-S1[-mini]`, sizes from xtuner's `InternS1Config` / `InternS1MiniConfig`):
    InternVL3.5's vision tower and projector, a Qwen3(-MoE) backbone with 153,216 vocabulary rows (the base
    BPE plus the SMILES / IUPAC / FASTA sub-tokenizers' ids), the `interns1` template (thinking on)."""
    return Preset(InternVLConfig(vision=vision, llm=llm, template="interns1", force_image_size=448),
                  params=params, published=published)


def _flash(base: Preset, params: int) -> Preset:
    """An InternVL3.5-Flash release: its base model plus mlp2 and the visual resolution router. The router's
    thresholds are not recorded: no released config.json was available to read them from (a checkpoint
    supplies its own)."""
    return Preset(base.config.replace(flash_mode=True), params=params)


def _v3(llm: LLMConfig) -> LLMConfig:
    """InternVL3 keeps Qwen2.5 but trains with dynamic-NTK RoPE (factor 2) and ends text at <|endoftext|>."""
    return dataclasses.replace(llm, rope_scaling=_ntk(2.0), eos_token_id=151643)


_TINY_VISION = VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            image_size=112, patch_size=14)
_TINY_LLM = LLMConfig(architecture="Qwen2ForCausalLM", vocab_size=268, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                      max_position_embeddings=4096, tie_word_embeddings=True)

# The shipped tiny InternVL, trained from scratch on the synthetic world of `tiny/world.py`: the real
# architecture at 96px tiles (patch 8 -> 12x12 patches -> pixel shuffle -> 36 tokens per tile), sized so the
# whole recipe trains on a 2-core CPU. Patch 8 rather than 12: the tower learned shapes (objects of 12-24 px
# in a tile) markedly faster per step with finer patches (docs/tiny-training.md). Vocabulary rows for the tiny BPE (`tiny/tokenizer.py`, ~600
# tokens; <IMG_CONTEXT> = 5, <|im_end|> = 2, <|endoftext|> = 0), padded to 1024.
_TINY_WORLD_VISION = VisionConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                                  image_size=96, patch_size=8)
_TINY_WORLD_LLM = LLMConfig(architecture="Qwen2ForCausalLM", vocab_size=1024, hidden_size=256, intermediate_size=704,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                            max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
                            eos_token_id=2, pad_token_id=0)

PRESETS: dict[str, Preset] = {
    # 112px tiles -> 8x8 patches -> 16 tokens per tile; vocab sized for the byte-level test tokenizer
    "tiny-random": Preset(InternVLConfig(vision=_TINY_VISION, llm=_TINY_LLM, max_dynamic_patch=6), params=489_408),
    "tiny": Preset(InternVLConfig(vision=_TINY_WORLD_VISION, llm=_TINY_WORLD_LLM, template="internvl2_5",
                                  force_image_size=96, max_dynamic_patch=6, image_token_id=5), params=5_325_888),
    # InternVL 1.5 and Mini-InternVL 1.5
    "InternVL-Chat-V1-5": _official(VIT_6B, INTERNLM2_20B, 25_514_186_112, "25.5B", "internlm2-chat"),
    "Mini-InternVL-Chat-2B-V1-5": _official(VIT_300M, INTERNLM2_1_8B, 2_205_754_368, "2.21B", "internlm2-chat"),
    "Mini-InternVL-Chat-4B-V1-5": _official(VIT_300M, PHI3_MINI_128K, 4_146_855_936, "4.15B", "phi3-chat"),
    # InternVL2
    "InternVL2-1B": _official(VIT_300M, QWEN2_0_5B, 938_158_976, "938M", "Hermes-2"),
    "InternVL2-2B": _official(VIT_300M, INTERNLM2_1_8B, 2_205_754_368, "2.2B", "internlm2-chat"),
    "InternVL2-4B": _official(VIT_300M, PHI3_MINI_128K, 4_146_855_936, "4.15B", "phi3-chat"),
    "InternVL2-8B": _official(VIT_300M, INTERNLM2_5_7B, 8_075_365_376, "8.1B", "internlm2-chat"),
    "InternVL2-26B": _official(VIT_6B, INTERNLM2_20B, 25_514_186_112, "25.5B", "internlm2-chat"),
    "InternVL2-40B": _official(VIT_6B, YI_34B, 40_068_684_160, "40.1B", "Hermes-2"),
    "InternVL2-Llama3-76B": _official(VIT_6B, LLAMA3_70B, 76_262_358_400, "76.3B", "internlm2-chat"),
    # InternVL2.5 (the -MPO releases share these architectures)
    "InternVL2_5-1B": _official(VIT_300M, QWEN2_5_0_5B, 938_193_024, "938M"),
    "InternVL2_5-2B": _official(VIT_300M, INTERNLM2_1_8B, 2_205_754_368, "2.21B"),
    "InternVL2_5-4B": _official(VIT_300M, QWEN2_5_3B, 3_712_637_952, "3.71B"),
    "InternVL2_5-8B": _official(VIT_300M, INTERNLM2_5_7B, 8_075_365_376, "8.08B"),
    "InternVL2_5-26B": _official(VIT_6B, INTERNLM2_5_20B, 25_514_186_112, "25.5B"),
    "InternVL2_5-38B": _official(VIT_6B, QWEN2_5_32B, 38_388_164_992, "38.4B"),
    "InternVL2_5-78B": _official(VIT_6B, QWEN2_5_72B, 78_408_318_336, "78.4B"),
    # InternVL3
    "InternVL3-1B": _official(VIT_300M, _v3(QWEN2_5_0_5B), 938_193_024, "938M"),
    "InternVL3-2B": _official(VIT_300M, _v3(QWEN2_5_1_5B), 2_088_957_440, "2.09B"),
    "InternVL3-8B": _official(VIT_300M, _v3(QWEN2_5_7B), 7_944_373_760, "7.94B"),
    "InternVL3-9B": _official(VIT_300M, INTERNLM3_8B, 9_141_824_512, "9.14B"),
    "InternVL3-14B": _official(VIT_300M, _v3(QWEN2_5_14B), 15_117_256_704, "15.1B"),
    "InternVL3-38B": _official(VIT_6B, _v3(QWEN2_5_32B), 38_388_164_992, "38.4B"),
    "InternVL3-78B": _official(VIT_6B, _v3(QWEN2_5_72B), 78_408_318_336, "78.4B"),
    # InternVL3.5
    "InternVL3_5-1B": _official(VIT_300M, QWEN3_0_6B, 1_060_897_792, "1.1B"),
    "InternVL3_5-2B": _official(VIT_300M, QWEN3_1_7B, 2_348_347_392, "2.3B"),
    "InternVL3_5-4B": _official(VIT_300M, QWEN3_4B, 4_732_489_216, "4.7B"),
    "InternVL3_5-8B": _official(VIT_300M, QWEN3_8B, 8_528_318_464, "8.5B"),
    "InternVL3_5-14B": _official(VIT_300M, QWEN3_14B, 15_119_523_840, "15.1B"),
    "InternVL3_5-38B": _official(VIT_6B, QWEN3_32B, 38_390_405_504, "38.4B"),
    "InternVL3_5-30B-A3B": _official(VIT_300M, QWEN3_30B_A3B, 30_848_730_112, "30.8B"),
    "InternVL3_5-241B-A28B": _official(VIT_6B, QWEN3_235B_A22B, 240_699_370_368, "240.7B"),
    "InternVL3_5-GPT-OSS-20B-A4B": _official(VIT_300M, GPT_OSS_20B, 21_238_874_304, "21.2B", "internvl3_5_gpt_oss"),
    # Intern-S1 (scientific, the InternVL3.5 architecture in the `interns1` layout)
    # (published: the paper's "241B total"; the mini's card names an 8B LLM + 0.3B ViT, i.e. about 8.5B)
    "Intern-S1": _intern_s1(VIT_6B, dataclasses.replace(QWEN3_235B_A22B, vocab_size=153216), 240_709_856_128, "241B"),
    "Intern-S1-mini": _intern_s1(VIT_300M, dataclasses.replace(QWEN3_8B, vocab_size=153216), 8_538_804_224, "8.5B"),
}


# InternVL3.5-Flash: the same models plus mlp2 (the 64-token branch) and the router (ViR); exact counts
_FLASH_PARAMS = {"1B": 1_151_171_586, "2B": 2_491_055_106, "4B": 4_906_132_482, "8B": 8_813_642_754,
                 "14B": 15_495_030_786, "38B": 39_563_810_306, "30B-A3B": 30_991_437_826}
PRESETS.update({f"InternVL3_5-{size}-Flash": _flash(PRESETS[f"InternVL3_5-{size}"], n)
                for size, n in _FLASH_PARAMS.items()})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
