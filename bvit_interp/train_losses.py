"""Extra training losses for ViTs on small data (levers of issue 14), kept apart from the recipe loop.

- ``RelativeLocalizationLoss``: Liu et al. (2021), "Efficient Training of Visual Transformers
  with Small Datasets" (the dense relative localisation task): from the final patch tokens,
  pairs of positions are sampled per image and a small MLP predicts their normalised offset
  (L1 loss). It forces the tokens to keep spatial information, which ViTs otherwise learn
  slowly from few images. The MLP is dropped after training; the model is unchanged.
- ``DistillationLoss``: soft (KL at temperature tau) or hard (teacher argmax) distillation
  from a frozen teacher, mixed with the base loss by ``alpha`` (DeiT, Touvron et al. 2021).
- ``distillation_loss``: DeiT's hard-label distillation through a distillation token (paper
  App. C): the CLS head learns the labels, the distillation head the teacher's argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelativeLocalizationLoss(nn.Module):
    """L1 loss of predicted vs true normalised (dy, dx) offsets between sampled patch-token pairs."""

    def __init__(self, embed_dim: int, grid: int, pairs: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.grid, self.pairs = grid, pairs
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``patch_tokens`` (B, grid*grid, D) after the final norm -> scalar loss."""
        b, n, _ = patch_tokens.shape
        first = torch.randint(0, n, (b, self.pairs), device=patch_tokens.device)
        second = torch.randint(0, n, (b, self.pairs), device=patch_tokens.device)
        take = lambda idx: torch.gather(patch_tokens, 1, idx[..., None].expand(-1, -1, patch_tokens.shape[-1]))  # noqa: E731
        pred = self.mlp(torch.cat([take(first), take(second)], dim=-1))
        dy = (first // self.grid - second // self.grid).float() / self.grid
        dx = (first % self.grid - second % self.grid).float() / self.grid
        return F.l1_loss(pred, torch.stack([dy, dx], dim=-1))


class DistillationLoss(nn.Module):
    """``(1 - alpha) * base + alpha * distill``; distill is soft KL (x tau^2) or CE on the teacher's argmax."""

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str = "soft", alpha: float = 0.5, tau: float = 2.0) -> None:
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"--distill must be 'soft' or 'hard', got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--distill-alpha must be in [0, 1], got {alpha}")
        self.base, self.kind, self.alpha, self.tau = base, kind, alpha, tau
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mixed loss of the student ``logits`` on ``images`` with true ``labels``."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if self.kind == "soft":
            t = self.tau
            distill = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                               reduction="batchmean", log_target=True) * t * t
        else:
            distill = F.cross_entropy(logits, teacher_logits.argmax(-1))
        return (1 - self.alpha) * self.base(logits, labels) + self.alpha * distill


def distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor | None,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    base_criterion: nn.Module,
    alpha: float = 0.5,
) -> torch.Tensor:
    """DeiT hard distillation: ``(1 - alpha) * base(cls, labels) + alpha * CE(dist, teacher argmax)``, alpha 0.5.

    ``labels`` may be Mixup/CutMix soft targets when ``base_criterion`` takes them; the teacher
    term always uses hard teacher labels. ``dist_logits`` None (a student without a distillation
    token) distils through the CLS logits, as DeiT does.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
    student = cls_logits if dist_logits is None else dist_logits
    teacher_labels = teacher_logits.detach().argmax(dim=-1)
    distill = F.cross_entropy(student, teacher_labels)
    return (1 - alpha) * base_criterion(cls_logits, labels) + alpha * distill
