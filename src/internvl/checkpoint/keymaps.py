"""Declarative maps between our parameter names and the official and `-hf` checkpoint layouts (spec section 2).

A `Rule` says: this internal tensor is made of these checkpoint tensors, joined by `join`, and split back
by `split`. Templates use `{i}` (layer) and `{e}` (expert). Our names equal the official ones for the
vision tower and `mlp1`; the LLM part follows each backbone's own naming (InternLM2's packed `wqkv`,
Phi-3's fused `qkv_proj` / `gate_up_proj`, Qwen3-MoE's per-expert tensors). `transformers`' conversion
script for InternVL is the source of the `-hf` names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import InternVLConfig
from . import transforms as T


@dataclass(frozen=True)
class Rule:
    """Our tensors `internal` are made from checkpoint tensors `external` (templates with `{i}`)."""

    internal: tuple[str, ...]
    external: tuple[str, ...]
    join: T.Fn = list  # checkpoint tensors -> ours
    split: T.Fn = list  # ours -> checkpoint tensors

    def matchers(self) -> list[re.Pattern]:
        return [re.compile(re.escape(t).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{rest\}", r"(?P<rest>.+)") + "$")
                for t in self.internal]


def _one(internal: str, external: str) -> Rule:
    return Rule((internal,), (external,))


_HF_VISION = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "encoder.layers.{i}.attn.proj.weight": "encoder.layer.{i}.attention.projection_layer.weight",
    "encoder.layers.{i}.attn.proj.bias": "encoder.layer.{i}.attention.projection_layer.bias",
    "encoder.layers.{i}.attn.q_norm.weight": "encoder.layer.{i}.attention.q_norm.weight",
    "encoder.layers.{i}.attn.k_norm.weight": "encoder.layer.{i}.attention.k_norm.weight",
    "encoder.layers.{i}.norm1.weight": "encoder.layer.{i}.layernorm_before.weight",
    "encoder.layers.{i}.norm1.bias": "encoder.layer.{i}.layernorm_before.bias",
    "encoder.layers.{i}.norm2.weight": "encoder.layer.{i}.layernorm_after.weight",
    "encoder.layers.{i}.norm2.bias": "encoder.layer.{i}.layernorm_after.bias",
    "encoder.layers.{i}.mlp.fc1.weight": "encoder.layer.{i}.mlp.fc1.weight",
    "encoder.layers.{i}.mlp.fc1.bias": "encoder.layer.{i}.mlp.fc1.bias",
    "encoder.layers.{i}.mlp.fc2.weight": "encoder.layer.{i}.mlp.fc2.weight",
    "encoder.layers.{i}.mlp.fc2.bias": "encoder.layer.{i}.mlp.fc2.bias",
    "encoder.layers.{i}.ls1": "encoder.layer.{i}.lambda_1",
    "encoder.layers.{i}.ls2": "encoder.layer.{i}.lambda_2",
}
_HF_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}

# LLM names shared by the LLaMA-style families (Qwen2/3, LLaMA, InternLM3, Phi-3 outside its fused tensors).
_LLAMA_LIKE = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.self_attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.mlp.gate.weight": "model.layers.{i}.mlp.gate.weight",
}
for _p in ("q_proj", "k_proj", "v_proj", "o_proj"):
    for _t in ("weight", "bias"):
        _LLAMA_LIKE[f"layers.{{i}}.self_attn.{_p}.{_t}"] = f"model.layers.{{i}}.self_attn.{_p}.{_t}"
for _p in ("gate_proj", "up_proj", "down_proj"):
    for _t in ("weight", "bias"):
        _LLAMA_LIKE[f"layers.{{i}}.mlp.{_p}.{_t}"] = f"model.layers.{{i}}.mlp.{_p}.{_t}"
# GPT-OSS: attention sinks, a router with bias, experts stored stacked (gate/up interleaved), with biases
for _n in ("self_attn.sinks", "mlp.router.weight", "mlp.router.bias", "mlp.experts.gate_up_proj",
           "mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj", "mlp.experts.down_proj_bias"):
    _LLAMA_LIKE[f"layers.{{i}}.{_n}"] = f"model.layers.{{i}}.{_n}"

_INTERNLM2 = {
    "embed_tokens.weight": "model.tok_embeddings.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "output.weight",
    "layers.{i}.input_layernorm.weight": "model.layers.{i}.attention_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.ffn_norm.weight",
    "layers.{i}.self_attn.o_proj.weight": "model.layers.{i}.attention.wo.weight",
    "layers.{i}.self_attn.o_proj.bias": "model.layers.{i}.attention.wo.bias",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.feed_forward.w1.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.feed_forward.w3.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.feed_forward.w2.weight",
}

# Checkpoint tensors that are derived state, safe to drop when reading.
DROPPABLE = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias$|\.masked_bias$)")


def _llm_rules(cfg: InternVLConfig, prefix: str, mxfp4: bool = False) -> list[Rule]:
    """Rules for `language_model.*`; `prefix` is the checkpoint prefix of the LLM (e.g. 'language_model.').

    `mxfp4`: the checkpoint stores GPT-OSS experts as MXFP4 `*_blocks` + `*_scales` (read-only: dequantized).
    """
    llm = cfg.llm
    arch = llm.architecture
    ours = "language_model.layers.{i}."
    theirs = prefix + "model.layers.{i}."
    qkv = tuple(ours + f"self_attn.{p}_proj.weight" for p in "qkv")
    rules: list[Rule] = []  # fused/stacked rules first: they win over the plain table below
    if arch == "InternLM2ForCausalLM":
        fns = T.internlm2_wqkv(llm.num_key_value_heads, llm.num_attention_heads // llm.num_key_value_heads,
                               llm.dim_per_head)
        rules.append(Rule(qkv, (theirs + "attention.wqkv.weight",), *fns))
        rules.append(Rule(tuple(k[:-6] + "bias" for k in qkv), (theirs + "attention.wqkv.bias",), *fns))
    if arch == "Phi3ForCausalLM":
        q, kv = llm.num_attention_heads * llm.dim_per_head, llm.num_key_value_heads * llm.dim_per_head
        rules.append(Rule(qkv, (theirs + "self_attn.qkv_proj.weight",), *T.split_rows([q, kv, kv])))
        rules.append(Rule((ours + "mlp.gate_proj.weight", ours + "mlp.up_proj.weight"),
                          (theirs + "mlp.gate_up_proj.weight",), *T.split_rows([llm.intermediate_size] * 2)))
    if mxfp4:
        for proj in ("gate_up_proj", "down_proj"):
            base = theirs + f"mlp.experts.{proj}"
            rules.append(Rule((ours + f"mlp.experts.{proj}",), (base + "_blocks", base + "_scales"), *T.mxfp4()))
    if llm.num_experts and not llm.is_gpt_oss:
        base = theirs + "mlp.experts."
        experts = range(llm.num_experts)
        rules.append(Rule((ours + "mlp.experts.gate_up_proj",),
                          tuple(base + f"{e}.{p}.weight" for e in experts for p in ("gate_proj", "up_proj")),
                          *T.stack_experts(pairs=True)))
        rules.append(Rule((ours + "mlp.experts.down_proj",), tuple(base + f"{e}.down_proj.weight" for e in experts),
                          *T.stack_experts(pairs=False)))
    table = _INTERNLM2 if arch == "InternLM2ForCausalLM" else _LLAMA_LIKE
    return rules + [_one(f"language_model.{k}", prefix + v) for k, v in table.items()]


def official_rules(cfg: InternVLConfig, mxfp4: bool = False) -> list[Rule]:
    """Our names <-> the official `InternVLChatModel` checkpoint."""
    rules = [_one(f"mlp1.{i}.{t}", f"mlp1.{i}.{t}") for i in ("0", "1", "3") for t in ("weight", "bias")]
    rules.append(_one("vision_model.{rest}", "vision_model.{rest}"))
    # InternVL3.5-Flash: the compressed branch and the router keep their official names
    rules += [_one(f"{part}.{{rest}}", f"{part}.{{rest}}") for part in ("mlp2", "pooling_before_gating", "gating")]
    return _llm_rules(cfg, "language_model.", mxfp4) + rules


def hf_rules(cfg: InternVLConfig, mxfp4: bool = False) -> list[Rule]:
    """Our names <-> the `-hf` `InternVLForConditionalGeneration` checkpoint (as transformers saves it)."""
    rules = []
    for t in ("weight", "bias"):
        rules.append(Rule((f"vision_model.encoder.layers.{{i}}.attn.qkv.{t}",),
                          tuple(f"vision_tower.encoder.layer.{{i}}.attention.{p}_proj.{t}" for p in "qkv"),
                          *T.concat_rows()))
        rules += [_one(f"mlp1.{i}.{t}", f"multi_modal_projector.{n}.{t}") for i, n in _HF_PROJECTOR.items()]
    rules += [_one(f"vision_model.{k}", f"vision_tower.{v}") for k, v in _HF_VISION.items()]
    return _llm_rules(cfg, "language_model.", mxfp4) + rules


def normalize_hf_key(key: str) -> str:
    """Newer transformers name -hf tensors `model.vision_tower.*`, `model.language_model.*`, `lm_head.*`."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("model."):
        return key[len("model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    return key


@dataclass(frozen=True)
class Step:
    """One concrete application of a rule: these of our keys from these checkpoint keys."""

    rule: Rule
    internal: tuple[str, ...]
    external: tuple[str, ...]


def plan(rules: list[Rule], internal_keys: list[str]) -> list[Step]:
    """Cover every one of our keys with exactly one rule application; unknown keys raise KeyError."""
    compiled = [(r, r.matchers()) for r in rules]
    done: set[str] = set()
    steps = []
    for key in internal_keys:
        if key in done:
            continue
        for rule, matchers in compiled:
            m = next((m for m in (p.match(key) for p in matchers) if m), None)
            if m is None:
                continue
            subs = {k: v for k, v in m.groupdict().items() if v is not None}

            def fill(t: str) -> str:
                for name, value in subs.items():
                    t = t.replace("{" + name + "}", value)
                return t
            step = Step(rule, tuple(fill(t) for t in rule.internal), tuple(fill(t) for t in rule.external))
            done.update(step.internal)
            steps.append(step)
            break
        else:
            raise KeyError(f"no checkpoint mapping for parameter {key!r}")
    return steps
