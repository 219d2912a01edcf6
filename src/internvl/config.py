"""Model configuration: the official `InternVLChatConfig` and the Hugging Face `-hf` `InternVLConfig`.

Spec sections 1-2. Three frozen dataclasses hold everything the math needs: `VisionConfig` (InternViT),
`LLMConfig` (one decoder config for every backbone family) and `InternVLConfig` (the whole model).
`from_official` / `to_official` read and write the official `config.json`; `from_hf` / `to_hf` the `-hf`
one. Every key of those files is either mapped to a field, listed as ignored on purpose, or warned about
by name: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

# Keys every transformers `PretrainedConfig.to_dict()` writes; they carry no architecture.
GENERIC_KEYS = frozenset("""
    _name_or_path _commit_hash _attn_implementation_autoset _attn_implementation add_cross_attention
    architectures auto_map bad_words_ids begin_suppress_tokens chunk_size_feed_forward cross_attention_hidden_size
    decoder_start_token_id diversity_penalty do_sample early_stopping encoder_no_repeat_ngram_size exponential_decay_length_penalty
    finetuning_task forced_bos_token_id forced_eos_token_id id2label label2id is_decoder is_encoder_decoder
    length_penalty max_length min_length model_type no_repeat_ngram_size num_beam_groups num_beams
    num_return_sequences output_attentions output_hidden_states output_scores prefix problem_type pruned_heads
    remove_invalid_values repetition_penalty return_dict return_dict_in_generate sep_token_id suppress_tokens
    task_specific_params temperature tf_legacy_loss tie_encoder_decoder tokenizer_class top_k top_p
    torch_dtype dtype torchscript transformers_version typical_p use_bfloat16 use_cache initializer_range
    dropout attention_dropout hidden_dropout hidden_dropout_prob projection_dropout resid_pdrop embd_pdrop
    attn_pdrop use_flash_attn attn_implementation initializer_factor_ignored pretraining_tp
    output_router_logits router_aux_loss_coef router_jitter_noise quantization_config
    use_sliding_window sliding_window max_window_layers layer_types vision_feature_select_strategy
""".split())

# Keys of the official top-level config that only steer training or old code paths.
OFFICIAL_IGNORED = frozenset("""
    use_backbone_lora use_llm_lora pad2square hidden_size tie_word_embeddings
    compress_seq attn_type posid_type group_list chunk_num interaction rope_pos_id_version rope_pos_id_stride
    use_return_dict
""".split())

_QWEN3 = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
GPT_OSS = "GptOssForCausalLM"
LAYER_TYPES = ("full_attention", "sliding_attention")
LLM_ARCHITECTURES = (
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "LlamaForCausalLM",
    "InternLM2ForCausalLM", "InternLM3ForCausalLM", "Phi3ForCausalLM", "GptOssForCausalLM",
)
# -hf `text_config.model_type` for each architecture transformers knows natively.
HF_MODEL_TYPES = {
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3_moe",
    "LlamaForCausalLM": "llama", "InternLM3ForCausalLM": "internlm3", "Phi3ForCausalLM": "phi3",
    "GptOssForCausalLM": "gpt_oss",
}


def _warn_unknown(where: str, d: dict, known: set | frozenset) -> None:
    unknown = sorted(k for k in d if k not in known and k not in GENERIC_KEYS)
    if unknown:
        logger.warning("%s: ignoring unknown config keys %s", where, ", ".join(unknown))


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """InternViT hyper-parameters (300M family: LayerNorm + qkv bias; 6B family: RMSNorm + qk-norm)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"  # "layer_norm" | "rms_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    initializer_factor: float = 0.1  # layer-scale (ls1/ls2) init value, official name
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"vision hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.norm_type not in ("layer_norm", "rms_norm"):
            raise ConfigError(f"vision norm_type must be 'layer_norm' or 'rms_norm', got {self.norm_type!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    # official vision_config <-> fields
    _OFFICIAL = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                 "patch_size", "num_channels", "qkv_bias", "qk_normalization", "norm_type", "layer_norm_eps",
                 "hidden_act", "initializer_factor", "drop_path_rate")

    @classmethod
    def from_official(cls, d: dict) -> VisionConfig:
        _warn_unknown("vision_config", d, set(cls._OFFICIAL))
        kw = {k: d[k] for k in cls._OFFICIAL if k in d and d[k] is not None}
        for k in ("image_size", "patch_size"):  # some configs store [h, w]
            if isinstance(kw.get(k), (list, tuple)):
                kw[k] = kw[k][0]
        return cls(**kw)

    def to_official(self) -> dict:
        d = {k: getattr(self, k) for k in self._OFFICIAL}
        d.update(architectures=["InternVisionModel"], model_type="intern_vit_6b", use_flash_attn=False,
                 dropout=0.0, attention_dropout=0.0, initializer_range=0.02)
        return d

    _HF_KNOWN = frozenset("""hidden_size num_hidden_layers num_attention_heads intermediate_size image_size patch_size
        num_channels attention_bias use_qk_norm norm_type layer_norm_eps hidden_act layer_scale_init_value
        drop_path_rate use_mask_token use_absolute_position_embeddings use_mean_pooling""".split())

    @classmethod
    def from_hf(cls, d: dict) -> VisionConfig:
        _warn_unknown("vision_config", d, cls._HF_KNOWN)
        if d.get("use_mean_pooling") is False:
            raise ConfigError("-hf vision_config.use_mean_pooling=False adds a final LayerNorm InternVL never has")
        size, patch = d.get("image_size", 448), d.get("patch_size", 14)
        return cls(
            hidden_size=d.get("hidden_size", 1024), num_hidden_layers=d.get("num_hidden_layers", 24),
            num_attention_heads=d.get("num_attention_heads", 16), intermediate_size=d.get("intermediate_size", 4096),
            image_size=size[0] if isinstance(size, (list, tuple)) else size,
            patch_size=patch[0] if isinstance(patch, (list, tuple)) else patch,
            num_channels=d.get("num_channels", 3), qkv_bias=d.get("attention_bias", False),
            qk_normalization=d.get("use_qk_norm", False), norm_type=d.get("norm_type", "layer_norm"),
            layer_norm_eps=d.get("layer_norm_eps", 1e-6), hidden_act=d.get("hidden_act", "gelu"),
            initializer_factor=d.get("layer_scale_init_value", 0.1),
        )

    def to_hf(self) -> dict:
        return {
            "model_type": "internvl_vision", "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size, "image_size": [self.image_size] * 2,
            "patch_size": [self.patch_size] * 2, "num_channels": self.num_channels,
            "attention_bias": self.qkv_bias, "use_qk_norm": self.qk_normalization, "norm_type": self.norm_type,
            "layer_norm_eps": self.layer_norm_eps, "hidden_act": self.hidden_act,
            "layer_scale_init_value": self.initializer_factor, "use_mean_pooling": True,
            "use_absolute_position_embeddings": True, "use_mask_token": False,
        }


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """One decoder config for every backbone: LLaMA-style blocks with per-family flags.

    `architecture` is the backbone's own `architectures[0]` (e.g. "Qwen2ForCausalLM"); it decides only how
    checkpoints are named and which flags default on, never a different forward pass.
    """

    architecture: str = "Qwen2ForCausalLM"
    vocab_size: int = 151674
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None  # {"rope_type": "default"|"linear"|"dynamic"|"llama3"|"longrope", ...}
    max_position_embeddings: int = 32768
    original_max_position_embeddings: int | None = None  # Phi-3 LongRoPE
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None  # bias on q/k/v; None = the family's (True for Qwen2 only)
    attention_out_bias: bool = False  # bias on the output projection (LLaMA / InternLM2 tie it to the qkv one)
    mlp_bias: bool = False
    qk_norm: bool | None = None  # per-head RMSNorm on q and k; None = the family's (Qwen3 / Qwen3-MoE)
    # sparse MoE (Qwen3-MoE, GPT-OSS); num_experts == 0 means dense
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # GPT-OSS: attention with learned sinks, sliding-window layers, clamped SwiGLU experts with biases
    sliding_window: int | None = None  # keys a sliding layer's query sees, itself included
    layer_types: tuple[str, ...] = ()  # per layer "full_attention" | "sliding_attention"; () = the family's
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, compare=False)  # family-specific keys kept for writing back

    def __post_init__(self) -> None:
        if self.architecture not in LLM_ARCHITECTURES:
            raise ConfigError(f"unsupported LLM architecture {self.architecture!r}; "
                              f"supported: {', '.join(LLM_ARCHITECTURES)}")
        qwen2, qwen3 = self.architecture == "Qwen2ForCausalLM", self.architecture in _QWEN3
        if self.attention_bias is None:
            object.__setattr__(self, "attention_bias", qwen2 or self.is_gpt_oss)
        if self.is_gpt_oss:
            self._check_gpt_oss()
        elif self.layer_types and set(self.layer_types) != {"full_attention"}:
            raise ConfigError(f"sliding-window layers are only implemented for GPT-OSS, not {self.architecture}")
        if self.qk_norm is None:
            object.__setattr__(self, "qk_norm", qwen3)
        # these flags are not written to the backbone's config.json, so they must be the family's
        if qwen2 and not self.attention_bias:
            raise ConfigError("Qwen2 backbones always have q/k/v bias (attention_bias=True)")
        if self.qk_norm != qwen3:
            raise ConfigError(f"qk_norm={self.qk_norm} does not match {self.architecture} (only Qwen3 has it)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.num_experts and not (0 < self.num_experts_per_tok <= self.num_experts):
            raise ConfigError(f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..{self.num_experts}")

    def _check_gpt_oss(self) -> None:
        object.__setattr__(self, "attention_out_bias", self.attention_bias)  # one flag for q/k/v and o alike
        if not self.num_experts:
            raise ConfigError("a GPT-OSS backbone needs num_experts (num_local_experts) > 0")
        if self.decoder_sparse_step != 1 or self.mlp_only_layers:
            raise ConfigError("every GPT-OSS layer is a MoE layer (no decoder_sparse_step / mlp_only_layers)")
        if self.layer_types:
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ConfigError(f"layer_types must list one of {LAYER_TYPES} per layer "
                                  f"({self.num_hidden_layers}), got {list(self.layer_types)}")
        if "sliding_attention" in self.all_layer_types and not (self.sliding_window or 0) >= 1:
            raise ConfigError(f"sliding-window layers need sliding_window >= 1, got {self.sliding_window}")

    @property
    def is_gpt_oss(self) -> bool:
        return self.architecture == GPT_OSS

    @property
    def all_layer_types(self) -> tuple[str, ...]:
        """Attention kind of every layer: the config's list, or GPT-OSS's default (sliding first, then alternating)."""
        if self.layer_types:
            return self.layer_types
        if self.is_gpt_oss:
            return tuple("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(self.num_hidden_layers))
        return ("full_attention",) * self.num_hidden_layers

    def window(self, layer: int) -> int | None:
        """Keys a query of `layer` may see (itself included), or None for full attention."""
        return self.sliding_window if self.all_layer_types[layer] == "sliding_attention" else None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, i: int) -> bool:
        return (self.num_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    # ---- reading a backbone config dict (official llm_config or -hf text_config) ----
    _COMMON = frozenset("""vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads
        num_key_value_heads head_dim hidden_act rms_norm_eps rope_theta rope_scaling rope_parameters
        max_position_embeddings original_max_position_embeddings tie_word_embeddings attention_bias mlp_bias bias
        qkv_bias num_experts num_experts_per_tok moe_intermediate_size norm_topk_prob decoder_sparse_step
        mlp_only_layers bos_token_id eos_token_id pad_token_id rope_type num_local_experts swiglu_alpha
        swiglu_limit experts_per_token initial_context_length""".split())  # the last two: gpt-oss-20b's duplicates

    @classmethod
    def from_dict(cls, d: dict, architecture: str | None = None) -> LLMConfig:
        arch = architecture or (d.get("architectures") or [None])[0]
        if arch is None:
            model_type = d.get("model_type")
            arch = {v: k for k, v in HF_MODEL_TYPES.items()}.get(model_type)
            if arch is None:
                raise ConfigError(f"cannot tell the LLM architecture: no 'architectures' and model_type {model_type!r}")
        _warn_unknown(f"llm_config ({arch})", d, cls._COMMON)
        rope_theta, rope_scaling = _read_rope(d)
        kw: dict[str, Any] = dict(
            architecture=arch, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d.get("intermediate_size", 0), num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim"), hidden_act=d.get("hidden_act", "silu"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=rope_theta, rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            original_max_position_embeddings=d.get("original_max_position_embeddings"),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        if arch in _QWEN3:
            kw.update(attention_bias=d.get("attention_bias", False))
        elif arch in ("LlamaForCausalLM", "InternLM3ForCausalLM"):
            bias = d.get("attention_bias", d.get("qkv_bias", False))
            kw.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=d.get("mlp_bias", d.get("bias", False)))
        elif arch == "InternLM2ForCausalLM":
            kw.update(attention_bias=d.get("bias", True), attention_out_bias=d.get("bias", True))
        if arch == GPT_OSS:
            # experts are `intermediate_size` wide; every layer is sparse
            layer_types = tuple(d.get("layer_types") or ())
            kw.update(attention_bias=d.get("attention_bias", True), num_experts=d.get("num_local_experts", d.get("num_experts")),
                      num_experts_per_tok=d["num_experts_per_tok"], moe_intermediate_size=d["intermediate_size"],
                      sliding_window=d.get("sliding_window", 128), swiglu_alpha=d.get("swiglu_alpha", 1.702),
                      swiglu_limit=d.get("swiglu_limit", 7.0), layer_types=layer_types)
            default = cls(**{**kw, "layer_types": ()}).all_layer_types
            if layer_types == default:
                kw["layer_types"] = ()  # the family's pattern; keep configs canonical (and truncatable)
        if arch == "Qwen3MoeForCausalLM":
            kw.update(num_experts=d.get("num_experts", d.get("num_local_experts")), num_experts_per_tok=d["num_experts_per_tok"],
                      moe_intermediate_size=d["moe_intermediate_size"], norm_topk_prob=d.get("norm_topk_prob", True),
                      decoder_sparse_step=d.get("decoder_sparse_step", 1),
                      mlp_only_layers=tuple(d.get("mlp_only_layers") or ()))
        if kw["head_dim"] is not None and kw["head_dim"] == d["hidden_size"] // d["num_attention_heads"] \
                and arch not in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
            kw["head_dim"] = None  # derived value; keep configs canonical
        return cls(**kw)

    def to_dict(self, hf: bool = False) -> dict:
        """The backbone's own config dict (official `llm_config`, or `-hf` `text_config` when `hf`)."""
        a = self.architecture
        d: dict[str, Any] = {
            "architectures": [a], "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act, "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
        }
        if hf:
            d["model_type"] = HF_MODEL_TYPES.get(a, a)
            d["rope_parameters"] = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        else:
            d["model_type"] = {"InternLM2ForCausalLM": "internlm2"}.get(a, HF_MODEL_TYPES.get(a, a))
            d["rope_theta"] = self.rope_theta
            d["rope_scaling"] = self.rope_scaling
        if self.head_dim is not None:
            d["head_dim"] = self.head_dim
        if self.original_max_position_embeddings is not None:
            d["original_max_position_embeddings"] = self.original_max_position_embeddings
        if a in ("LlamaForCausalLM", "InternLM3ForCausalLM"):
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
            if a == "InternLM3ForCausalLM" and not hf:
                d.update(qkv_bias=self.attention_bias, bias=self.mlp_bias)
        elif a == "InternLM2ForCausalLM":
            d["bias"] = self.attention_bias
        elif a in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
            d["attention_bias"] = self.attention_bias
        if self.is_gpt_oss:
            d.update(attention_bias=self.attention_bias, intermediate_size=self.moe_intermediate_size,
                     num_local_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     sliding_window=self.sliding_window, layer_types=list(self.all_layer_types),
                     swiglu_alpha=self.swiglu_alpha, swiglu_limit=self.swiglu_limit)
            return d
        if self.num_experts:
            d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
                     decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=list(self.mlp_only_layers))
        return d


def _read_rope(d: dict) -> tuple[float, dict | None]:
    """Normalize old (`rope_theta` + `rope_scaling`) and new (`rope_parameters`) RoPE keys."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    theta = params.pop("rope_theta", d.get("rope_theta", 10000.0))
    scaling.update(params)
    if "type" in scaling:  # old spelling
        scaling.setdefault("rope_type", scaling.pop("type"))
    if scaling.get("rope_type") == "su":  # Phi-3's first name for LongRoPE
        scaling["rope_type"] = "longrope"
    if not scaling or scaling.get("rope_type", "default") == "default" and len(scaling) <= 1:
        return float(theta), None
    return float(theta), scaling


@dataclass(frozen=True, kw_only=True)
class InternVLConfig:
    """The whole model: InternViT -> pixel shuffle -> mlp1 -> decoder, plus the image-handling settings."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    template: str = "internvl2_5"
    select_layer: int = -1
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    force_image_size: int | None = None
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    image_token_id: int | None = None  # id of <IMG_CONTEXT>; official configs leave it to the tokenizer
    system_message: str | None = None  # overrides the template's system message (official config key)
    # V2PE (InternVL3 paper): each image token advances the RoPE position by this much instead of 1; None = off
    v2pe_stride: float | None = None
    # InternVL3.5-Flash (ViR): with flash_mode set (True or False) the model has mlp2, pooling_before_gating
    # and gating; True routes tiles by default. The thresholds come from the checkpoint's config.json.
    flash_mode: bool | None = None
    flash_relative_threshold: float | None = None  # quantile of the request's tiles' compress probability
    flash_absolute_threshold: float | None = None  # compress probability a tile needs at least

    def __post_init__(self) -> None:
        if self.v2pe_stride is not None and not 0 < self.v2pe_stride <= 1:
            raise ConfigError(f"v2pe_stride must be in (0, 1] (the position step of one image token), "
                              f"got {self.v2pe_stride}")
        if self.ps_version not in ("v1", "v2"):
            raise ConfigError(f"ps_version must be 'v1' or 'v2', got {self.ps_version!r}")
        r = 1 / self.downsample_ratio
        if abs(r - round(r)) > 1e-6:
            raise ConfigError(f"downsample_ratio {self.downsample_ratio} must be 1/k for an integer k")
        if (self.image_size // self.vision.patch_size) % round(r):
            raise ConfigError(f"a {self.image_size // self.vision.patch_size}-patch grid cannot be pixel-shuffled "
                              f"by downsample_ratio {self.downsample_ratio}")
        if not 1 <= self.min_dynamic_patch <= self.max_dynamic_patch:
            raise ConfigError(f"need 1 <= min_dynamic_patch ({self.min_dynamic_patch}) <= max_dynamic_patch "
                              f"({self.max_dynamic_patch})")
        if not -self.vision.num_hidden_layers - 1 <= self.select_layer < self.vision.num_hidden_layers + 1:
            raise ConfigError(f"select_layer {self.select_layer} is outside the "
                              f"{self.vision.num_hidden_layers}-layer vision tower")
        if self.has_vir:
            self._check_vir()

    def _check_vir(self) -> None:
        grid, step = self.image_size // self.vision.patch_size, 2 * round(1 / self.downsample_ratio)
        if grid % step:  # the 64-token branch pixel-shuffles by downsample_ratio**2 in one go
            raise ConfigError(f"flash_mode needs a patch grid divisible by {step} (the compressed branch shuffles "
                              f"by downsample_ratio^2 = {self.downsample_ratio ** 2:g}); this model's grid is "
                              f"{grid}x{grid}")
        if self.vision.hidden_size % 16:
            raise ConfigError(f"flash_mode's pooling has 16 heads; vision hidden_size {self.vision.hidden_size} is "
                              "not divisible by 16")
        for name in ("flash_relative_threshold", "flash_absolute_threshold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")

    @property
    def image_size(self) -> int:
        return self.force_image_size or self.vision.image_size

    @property
    def num_image_token(self) -> int:
        """Tokens per tile: (image_size / patch_size)^2 * downsample_ratio^2 (256 for 448/14/0.5)."""
        return int((self.image_size // self.vision.patch_size) ** 2 * self.downsample_ratio ** 2)

    @property
    def has_vir(self) -> bool:
        """Whether the model has the Flash modules (mlp2, pooling_before_gating, gating)."""
        return self.flash_mode is not None

    @property
    def num_image_token_compressed(self) -> int:
        """Tokens per tile the router's compressed branch gives: a quarter of `num_image_token` (64 of 256)."""
        return self.num_image_token // 4

    def replace(self, **changes: Any) -> InternVLConfig:
        return dataclasses.replace(self, **changes)

    # ---------------- official layout ----------------
    _OFFICIAL_TOP = ("template", "select_layer", "downsample_ratio", "ps_version", "force_image_size",
                     "dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch", "system_message",
                     "v2pe_stride")
    _FLASH = ("flash_mode", "flash_relative_threshold", "flash_absolute_threshold")

    @classmethod
    def from_official(cls, d: dict) -> InternVLConfig:
        """Read an official `config.json` dict (`architectures: ["InternVLChatModel"]`)."""
        if "vision_config" not in d or "llm_config" not in d:
            raise ConfigError("not an official InternVL config: needs 'vision_config' and 'llm_config'")
        known = set(cls._OFFICIAL_TOP) | set(cls._FLASH) | {"vision_config", "llm_config", "image_token_id"} \
            | OFFICIAL_IGNORED
        _warn_unknown("config.json", d, known)
        kw = {k: d[k] for k in cls._OFFICIAL_TOP if k in d}
        kw.update({k: d[k] for k in cls._FLASH if d.get(k) is not None})
        if kw.get("flash_mode") is not None and not isinstance(kw["flash_mode"], bool):
            raise ConfigError(f"flash_mode must be true or false, got {kw['flash_mode']!r}")
        if kw.get("flash_mode"):  # the official code reads both thresholds whenever flash_mode is true
            missing = [k for k in cls._FLASH[1:] if k not in kw]
            if missing:
                raise ConfigError(f"config.json sets flash_mode but not {' and '.join(missing)} (the router's "
                                  "thresholds); add them, or set flash_mode to false")
        if kw.get("template") is None:
            kw.pop("template", None)
        if "ps_version" not in d:
            kw["ps_version"] = "v1"  # the official default when the key is absent
        return cls(vision=VisionConfig.from_official(d["vision_config"]),
                   llm=LLMConfig.from_dict(d["llm_config"]), image_token_id=d.get("image_token_id"), **kw)

    def to_official(self) -> dict:
        d: dict[str, Any] = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}
        d.update({k: getattr(self, k) for k in self._OFFICIAL_TOP if k not in ("system_message", "v2pe_stride")})
        for key in ("system_message", "v2pe_stride"):  # written only when set: absent means the default
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d["vision_config"] = self.vision.to_official()
        d["llm_config"] = self.llm.to_dict()
        d["use_backbone_lora"] = 0
        d["use_llm_lora"] = 0
        d["tie_word_embeddings"] = self.llm.tie_word_embeddings
        if self.image_token_id is not None:
            d["image_token_id"] = self.image_token_id
        if self.has_vir:
            d.update({k: getattr(self, k) for k in self._FLASH if getattr(self, k) is not None})
        return d

    # ---------------- -hf layout ----------------
    _HF_TOP = frozenset("""vision_config text_config image_token_id image_seq_length downsample_ratio
        vision_feature_layer projector_hidden_act tie_word_embeddings template system_message""".split())

    @classmethod
    def from_hf(cls, d: dict, **image_settings: Any) -> InternVLConfig:
        """Read a `-hf` `config.json` dict (`InternVLForConditionalGeneration`).

        The -hf config has no tiling settings (they live in the processor files); pass them as keyword
        arguments, otherwise the InternVL2.5+ defaults apply. `template` and `system_message` are read when
        this project wrote them (transformers keeps unknown keys); keyword arguments take precedence.
        """
        if "vision_config" not in d or "text_config" not in d:
            raise ConfigError("not a -hf InternVL config: needs 'vision_config' and 'text_config'")
        _warn_unknown("config.json", d, cls._HF_TOP)
        if d.get("projector_hidden_act", "gelu") != "gelu":
            raise ConfigError(f"projector_hidden_act {d['projector_hidden_act']!r} is not InternVL's GELU")
        layer = d.get("vision_feature_layer", -1)
        if isinstance(layer, list):
            raise ConfigError("a list vision_feature_layer is not an InternVL setting")
        text = dict(d["text_config"])
        # transformers 5 ties the LM head by the top-level flag (default True) and ignores text_config's; the
        # loader unties again when the checkpoint holds an lm_head.weight of its own (`checkpoint.loader`)
        text["tie_word_embeddings"] = bool(d.get("tie_word_embeddings", True))
        settings = {k: d[k] for k in ("template", "system_message") if d.get(k) is not None}
        settings.update(image_settings)
        return cls(vision=VisionConfig.from_hf(d["vision_config"]), llm=LLMConfig.from_dict(text),
                   select_layer=layer, downsample_ratio=d.get("downsample_ratio", 0.5), ps_version="v2",
                   image_token_id=d.get("image_token_id"), **settings)

    def to_hf(self) -> dict:
        """The -hf `config.json`; the tiling settings go to the processor files (see checkpoint/loader.py).
        `template` (and `system_message`) are ours, kept so that a conversion back restores them."""
        if self.v2pe_stride is not None:
            raise ConfigError("the -hf layout has no V2PE setting; this model uses v2pe_stride "
                              f"{self.v2pe_stride} (save it in the official layout)")
        if self.ps_version != "v2":
            raise ConfigError("the -hf layout only has pixel shuffle v2; this model uses ps_version 'v1'")
        if self.llm.architecture not in HF_MODEL_TYPES:
            raise ConfigError(f"transformers has no native {self.llm.architecture}; the -hf layout cannot hold it")
        if self.has_vir:
            raise ConfigError("transformers has no native InternVL3.5-Flash (mlp2 and the visual resolution router); "
                              "the -hf layout cannot hold it: keep the official layout")
        return {
            "architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "vision_config": self.vision.to_hf(), "text_config": self.llm.to_dict(hf=True),
            "image_token_id": self.image_token_id, "image_seq_length": self.num_image_token,
            "downsample_ratio": self.downsample_ratio, "vision_feature_layer": self.select_layer,
            "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
            "tie_word_embeddings": self.llm.tie_word_embeddings, "template": self.template,
            **({"system_message": self.system_message} if self.system_message is not None else {}),
        }
