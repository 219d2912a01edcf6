"""V2PE (Variable Visual Position Encoding, InternVL3 paper section 2.1): image tokens advance RoPE by less than 1.

Spec: shared/docs/internvl35.md section 4. Text tokens advance the position by 1; every image token by a
stride delta, so images take less of the position range (longer multi-image contexts stay within what RoPE
was trained on). The rule is the official `v2pe_fix` (unmerged InternVL PR #1000, `v2pe_utils.get_rope_pos_id`):
an image's n tokens get `linspace(last, last + delta * n, n + 1)[1:]` (float32) after the previous position
`last`, and the next text token continues at `ceil(last image position) + 1`. There `delta` is
`rope_pos_id_stride / num_image_token`; here `stride` is delta itself, so stride 1 gives the ordinary positions
0, 1, 2, ... exactly. Off by default: the released InternVL3 checkpoints use plain positions.
"""

from __future__ import annotations

import math

import torch


def v2pe_positions(input_ids: torch.Tensor, image_token_id: int, stride: float) -> torch.Tensor:
    """input_ids (T,) -> float32 positions (T,); each run of `image_token_id` is one image (all its tiles)."""
    ids = input_ids.reshape(-1)
    t = ids.shape[0]
    positions = torch.empty(t, dtype=torch.float32)
    if t == 0:
        return positions
    is_image = (ids == image_token_id).cpu()
    # boundaries of the alternating text / image runs
    change = torch.nonzero(is_image[1:] != is_image[:-1]).flatten().add(1).tolist()
    last = -1.0
    for a, b in zip([0] + change, change + [t]):
        n = b - a
        if bool(is_image[a]):
            run = torch.linspace(last, last + stride * n, n + 1, dtype=torch.float32)[1:]
            positions[a:b] = run
            last = float(math.ceil(float(run[-1])))
        else:
            positions[a:b] = torch.arange(last + 1, last + 1 + n, dtype=torch.float32)
            last += n
    return positions.to(input_ids.device)
