"""Compiled CPU kernels for decoding, built on first use: bandwidth-bound matrix-vector products (decode.c) and
a whole decoder layer of a decode step in one call (layer.c).

    from internvl.kernels import decode_kernels, linear
    with decode_kernels(rows=1, dtype=torch.bfloat16, device="cpu"):
        y = linear(x, layer)   # the kernel for fp32/bf16 nn.Linear and Int8Linear; elsewhere layer(x)

`build.py` compiles and loads the library (or warns once and leaves the PyTorch path in place);
`gemv.py` describes weights to it and is the projections' hook; `layer.py` is the decoder's (`decode_layers`:
every layer of a one-token-per-row step, or None where the modules must run). `INTERNVL_KERNELS=0` switches
them off.
"""

from .build import library
from .gemv import (available, decode_kernels, dense_weight, dequantize_int4, int4_weight, int8_weight, linear,
                   matmul, quantize_int4)

__all__ = ["available", "decode_kernels", "dense_weight", "dequantize_int4", "int4_weight", "int8_weight",
           "library", "linear", "matmul", "quantize_int4"]
