"""Contrastive objectives: pure functions on features plus registered `nn.Module` wrappers.

    loss = get_loss("clip", chunk_size=1024)     # or "siglip", "align"; list_losses() names them all
    out = loss(model(pixels, tokens))            # LossOutput(total, parts)
    loss_needs(loss)                             # what else it needs: [], ["token_features"], ...

Every wrapper computes the distributed part itself (features gathered with gradient, local rows only), so
under DDP the gradient equals one process holding the whole batch. `chunk_size` bounds memory at
O(chunk · N) instead of N×N; `clipforge.losses.gradcache` bounds activation memory for huge batches.
"""
from clipforge.losses import coca, counting, cwcl, distill, filip, longclip, multipos  # noqa: F401  (registers them)
from clipforge.losses.align import ALIGNLoss, align_loss
from clipforge.losses.clip import CLIPLoss, clamp_logit_scale_, clip_loss, contrastive_terms
from clipforge.losses.registry import NEEDS, LossOutput, get_loss, list_losses, loss_needs, register_loss
from clipforge.losses.siglip import SigLIPLoss, siglip_loss

__all__ = ["LossOutput", "NEEDS", "get_loss", "list_losses", "loss_needs", "register_loss", "clip_loss", "siglip_loss",
           "align_loss", "contrastive_terms", "CLIPLoss", "SigLIPLoss", "ALIGNLoss", "clamp_logit_scale_"]
