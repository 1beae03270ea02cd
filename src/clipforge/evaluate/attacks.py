"""L-infinity adversarial attacks on images in pixel space: FGSM and PGD, through the model's normalisation.

The attack variable is the image the model sees after its resize and crop, as pixels in [0, 1]: the normalised
tensor a model's preprocessing produced is mapped back (`PixelSpace.to_pixels`: x * std + mean), perturbed, and
mapped forward again inside the graph (`PixelSpace.normalise`, with the per-image standardisation where the
model's config has it), so gradients flow through the normalisation and ε is in the usual units (4/255 = four
grey levels).

  FGSM (Goodfellow et al. 2015):  x' = clip(x + ε sign(∇ℓ(x)), 0, 1)
  PGD  (Madry et al. 2018):       x⁰ = x + U(-ε, ε) (seeded);  xᵗ⁺¹ = Π(xᵗ + α sign(∇ℓ(xᵗ))),
                                  Π projecting onto |x' - x|∞ ≤ ε and [0, 1]; α = 2.5 ε / steps by default

`loss(pixels) -> (B,)` is what the attack ascends: cross-entropy of the true class for an untargeted attack on a
classifier, or the similarity to a chosen text for a targeted one. Only the input's gradient is taken (the
weights get none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from clipforge.errors import UsageError

__all__ = ["PixelSpace", "fgsm", "pgd", "ATTACKS"]

ATTACKS = ("pgd", "fgsm")


@dataclass
class PixelSpace:
    """The model's normalisation as a differentiable map from [0, 1] pixels to its input."""

    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor
    per_image_norm: bool = False

    @classmethod
    def of(cls, preprocess) -> "PixelSpace":
        cfg = getattr(preprocess, "cfg", None)
        if cfg is None or not hasattr(cfg, "mean") or not hasattr(cfg, "std"):
            raise UsageError("the attack needs the model's normalisation (mean and std of its preprocessing); "
                             f"this model's preprocessing ({type(preprocess).__name__}) does not expose one")
        return cls(torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1),
                   torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1), bool(getattr(cfg, "per_image_norm", False)))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, H, W) -> pixels in [0, 1]. With per-image standardisation the pixels are not
        recoverable from its output; such a model is refused (`UsageError`)."""
        if self.per_image_norm:
            raise UsageError("this model standardises each image after normalising it (per_image_norm): its "
                             "input does not determine the pixels, so pixel-space attacks and corruptions are "
                             "not defined for it")
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        out = (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)
        if self.per_image_norm:
            flat = out.flatten(1)
            out = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-6)).view_as(out)
        return out


def _grad(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss(x).sum(), x)
    return g


def fgsm(loss: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size `eps` (pixels in [0, 1])."""
    if eps < 0:
        raise UsageError(f"`epsilons` must be >= 0, got {eps}")
    if eps == 0:
        return pixels.detach().clone()
    return (pixels + eps * _grad(loss, pixels).sign()).clamp(0, 1).detach()


def pgd(loss: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: Optional[float] = None, random_start: bool = True,
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`steps` projected signed-gradient steps of `step_size` (default 2.5 eps / steps) within the eps-ball."""
    if eps < 0:
        raise UsageError(f"`epsilons` must be >= 0, got {eps}")
    if steps < 1:
        raise UsageError(f"`attack_steps` must be >= 1, got {steps}")
    if step_size is not None and step_size <= 0:
        raise UsageError(f"`step_size` must be > 0, got {step_size}")
    x0 = pixels.detach()
    if eps == 0:
        return x0.clone()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x0
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        x = (x0 + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x = x + alpha * _grad(loss, x).sign()
        x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1).detach()
    return x
