"""Weight-only int8 quantization for inference: `quantize_int8(model)` swaps `nn.Linear` for `Int8Linear`.

Each output channel (weight row) gets one symmetric scale, `scale = max|w_row| / 127`, rounded to the model
dtype before the weights are rounded against it, so every weight is off by at most half a step (scale / 2).
Activations stay in the model dtype. What is quantized: the decoder's q/k/v/o and gate/up/down projections
and an untied `lm_head`; with `include_vision`, also the ViT (qkv, proj, fc1, fc2) and `mlp1`. What is not:
embeddings, norms, the MoE router and the stacked MoE experts (`models/moe.py` keeps them as full-precision
Parameters, so a Qwen3-MoE model shrinks only in its attention), and a tied LM head (`lm_head is None`: the
embedding matrix serves lookups and logits). `tied_head=True` sets `Decoder.tied_head` to an int8 copy of
that matrix used only for the logits: faster decoding at the cost of out*in extra bytes (not saved in the state dict).

Kernels. On CPU with bf16 activations and at most `PACK_MAX_ROWS` rows (decode steps),
`torch._weight_int8pack_mm(x, w, scales)` runs: x must be 2-D and contiguous, w int8 (N, K) contiguous,
scales 1-D (N,) of x's dtype (fp32 scales with bf16 x are refused). It is a per-row GEMV: about 2-3x
faster than a bf16 GEMM for one row, slower from ~6 rows on, and its fp32/fp16 paths are ~10x slower than
a plain GEMM (torch 2.13, AVX-512 CPU). Everything else (prefill, fp32/fp16, CUDA, whose upstream kernel,
where built, is a naive one-thread-per-output fp32 loop; unmeasured) casts the int8 weight to x's dtype and runs
`F.linear`, scaling the output (fp16 scales the weight instead, so the unscaled sums cannot overflow): the
same results, the memory saving, but no speed-up on GPU.

Reading `Int8Linear.weight` returns a dequantized full-precision temporary, so code that inspects
`.weight` (its dtype) keeps working; `Decoder.logits` calls the head module, so the int8 kernel runs there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACK_MAX_ROWS = 4  # measured break-even of the int8pack GEMV against a bf16 GEMM is ~6 rows


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K) and per-row scales (N,) in `scale_dtype` (default: the weight's dtype)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).to(scale_dtype or weight.dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero (or underflowing) rows
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = (x @ qweight.T) * scale + bias, with `qweight` int8 (out, in) and `scale` (out,) as buffers."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 persistent: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous(), persistent=persistent)
        self.register_buffer("scale", scale.contiguous(), persistent=persistent)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale_dtype: torch.dtype | None = None) -> Int8Linear:
        return cls(*quantize_weight(linear.weight, scale_dtype), linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the scale dtype: a temporary, for code that reads `.weight`."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        scale = self.scale if self.scale.dtype == x.dtype else self.scale.to(x.dtype)
        # in_features % 16: torch 2.13's int8pack kernel crashes (reads out of bounds) for widths like 72 or 40
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x2.shape[0] <= PACK_MAX_ROWS
                and self.in_features % 16 == 0 and hasattr(torch, "_weight_int8pack_mm")):
            y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, scale)
        elif x.dtype == torch.float16:
            y = F.linear(x2, self.qweight.to(x.dtype) * scale[:, None])
        else:
            y = F.linear(x2, self.qweight.to(x.dtype)) * scale
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scale_dtype={self.scale.dtype}")


@torch.no_grad()
def quantize_int8(model: nn.Module, include_vision: bool = False, skip_lm_head: bool = False,
                  tied_head: bool = False) -> nn.Module:
    """Replace the InternVL model's linear layers by `Int8Linear` in place (see the module docstring).

    Args:
        include_vision: also quantize the ViT and the `mlp1` projector (they run once per image).
        skip_lm_head: keep an untied `lm_head` in full precision (the most error-sensitive layer).
        tied_head: for a tied LM head, add an int8 copy of the embedding matrix for the logits.
    Returns the same model; calling it again only quantizes what is still full precision.
    """
    decoder = model.language_model
    roots = [decoder] + ([model.vision_model, model.mlp1] if include_vision else [])
    for root in roots:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and not (skip_lm_head and child is decoder.lm_head):
                    setattr(parent, name, Int8Linear.from_linear(child))
    if tied_head and not skip_lm_head and decoder.lm_head is None and decoder.tied_head is None:
        decoder.tied_head = Int8Linear(*quantize_weight(decoder.embed_tokens.weight), persistent=False)
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (shared tensors counted once)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
