"""The hooked forward of one timm ``Block``: the same maths as ``Block.forward``, split at every site.

The model uses timm's own ``Block.forward`` when no hook wants a (step, block); this
function runs only when one does, so the plain path stays timm's fused path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .hooks import HookContext


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of the CLS query (token 0) over all keys, in fp32 also under autocast: (B, H, N)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
        return scores.softmax(dim=-1)[:, :, 0]


def hooked_block_forward(block: Block, x: torch.Tensor, hook: HookContext) -> torch.Tensor:
    """Pre-norm block ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, firing each site."""
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("gated attention is not supported by the hooked path")
    x = hook("resid_pre", x)
    h = block.norm1(x)
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = hook("attn.q", q), hook("attn.k", k), hook("attn.v", v)

    if hook.wants("attn.pattern"):
        with torch.autocast(device_type=q.device.type, enabled=False):  # fp32 pattern also under AMP
            scores = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
            pattern = scores.softmax(dim=-1)
        pattern = hook("attn.pattern", pattern)
        if hook.wants("attn.cls_pattern"):
            hook("attn.cls_pattern", pattern[:, :, 0])
        z = attn.attn_drop(pattern).to(v.dtype) @ v
    else:
        z = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        if hook.wants("attn.cls_pattern"):
            hook("attn.cls_pattern", cls_attention_row(q, k, attn.scale))
    z = hook("attn.z", z)
    out = attn.proj_drop(attn.proj(attn.norm(z.transpose(1, 2).reshape(b, n, attn.attn_dim))))
    out = hook("attn_out", block.ls1(out))
    x = hook("resid_mid", x + block.drop_path1(out))

    mlp = block.mlp
    hidden = hook("mlp.pre", mlp.fc1(block.norm2(x)))
    hidden = hook("mlp.post", mlp.drop1(mlp.act(hidden)))
    out = hook("mlp_out", block.ls2(mlp.drop2(mlp.fc2(mlp.norm(hidden)))))
    return hook("resid_post", x + block.drop_path2(out))
