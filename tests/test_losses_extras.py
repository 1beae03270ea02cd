"""CWCL, counting hard negatives, FILIP and reinforced distillation against brute-force references."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.losses import clip_loss, get_loss, list_losses
from clipforge.losses.counting import counting_loss
from clipforge.losses.cwcl import cwcl_loss
from clipforge.losses.distill import distill_loss
from clipforge.losses.filip import filip_loss, token_similarities
from clipforge.models.output import CLIPOutput


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _log_softmax(v):
    v = np.asarray(v, dtype=np.float64)
    return v - v.max() - np.log(np.exp(v - v.max()).sum())


def test_registry_has_extras():
    assert {"cwcl", "clip+count", "filip", "clip+distill"} <= set(list_losses())
    with pytest.raises(UsageError, match="frozen"):
        get_loss("cwcl", frozen="audio")


def test_cwcl_matches_loop_formula_both_directions():
    p, q, s = _unit(6, 5, seed=1), _unit(6, 5, seed=2), 4.0
    pn, qn = p.numpy(), q.numpy()
    w = pn @ pn.T / 2 + 0.5
    fwd = -np.mean([(w[i] * _log_softmax(s * qn @ pn[i])).sum() / w[i].sum() for i in range(6)])
    bwd = -np.mean([(w[j] * _log_softmax(s * pn @ qn[j])).sum() / w[j].sum() for j in range(6)])
    assert cwcl_loss(p, q, s).item() == pytest.approx(fwd, rel=1e-12)
    assert cwcl_loss(p, q, s, reverse=True).item() == pytest.approx((fwd + bwd) / 2, rel=1e-12)
    # The module with the text tower frozen uses text as p.
    out = CLIPOutput(q, p, torch.tensor(s, dtype=torch.float64))
    assert get_loss("cwcl", frozen="text")(out).total.item() == pytest.approx(fwd, rel=1e-12)


def test_cwcl_reduces_to_infonce_when_weights_are_one_hot():
    # Two antipodal frozen embeddings: w = identity, so CWCL is the one-directional InfoNCE.
    p = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    q = _unit(2, 2, seed=3)
    logits = 3.0 * p @ q.t()
    assert cwcl_loss(p, q, 3.0).item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item())


def test_counting_term_matches_two_way_softmax():
    img, txt, cf = _unit(5, 4, seed=4), _unit(5, 4, seed=5), _unit(2, 4, seed=6)
    s = torch.tensor(20.0, dtype=torch.float64)
    idx = torch.tensor([1, 3])
    ref = np.mean([-math.log(math.exp(20 * float(img[i] @ txt[i]))
                             / (math.exp(20 * float(img[i] @ txt[i])) + math.exp(20 * float(img[i] @ cf[k]))))
                   for k, i in enumerate(idx.tolist())])
    assert counting_loss(img[idx], txt[idx], cf, s).item() == pytest.approx(ref, rel=1e-12)
    loss = get_loss("clip+count", weight=0.5)
    out = CLIPOutput(img, txt, s)
    res = loss(out, {"counterfactual_text_embeds": cf, "count_index": idx})
    assert res.total.item() == pytest.approx(clip_loss(img, txt, s).item() + 0.5 * ref, rel=1e-12)
    assert set(res.parts) >= {"clip", "count", "clip+count"}
    # No counting samples in the batch: plain CLIP.
    assert loss(out, {}).total.item() == pytest.approx(clip_loss(img, txt, s).item(), rel=1e-12)


def _np_filip_sims(x, y, mask):
    m, n = x.shape[0], y.shape[0]
    s_img, s_txt = np.zeros((m, n)), np.zeros((n, m))
    for i in range(m):
        for j in range(n):
            real = [r for r in range(y.shape[1]) if mask[j, r]]
            s_img[i, j] = np.mean([max(x[i, k] @ y[j, r] for r in real) for k in range(x.shape[1])])
            s_txt[j, i] = np.mean([max(y[j, r] @ x[i, k] for k in range(x.shape[1])) for r in real])
    return s_img, s_txt


def test_filip_similarities_and_loss_match_loops():
    x, y = _unit(4, 3, 5, seed=7), _unit(4, 6, 5, seed=8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]).bool()
    ref_i, ref_t = _np_filip_sims(x.numpy(), y.numpy(), mask.numpy())
    for chunk in (None, 1, 3):
        s_img, s_txt = token_similarities(x, y, mask, chunk)
        np.testing.assert_allclose(s_img.numpy(), ref_i, rtol=1e-12)
        np.testing.assert_allclose(s_txt.numpy(), ref_t, rtol=1e-12)
    assert not np.allclose(ref_i, ref_t.T)     # the two directions are different matrices
    s, labels = 5.0, torch.arange(4)
    ref = (F.cross_entropy(torch.tensor(s * ref_i), labels, label_smoothing=0.1)
           + F.cross_entropy(torch.tensor(s * ref_t), labels, label_smoothing=0.1)) / 2
    assert filip_loss(x, y, mask, s).item() == pytest.approx(ref.item(), rel=1e-12)
    out = CLIPOutput(None, None, torch.tensor(s, dtype=torch.float64), image_tokens=x * 3, text_tokens=y,
                     text_mask=mask)      # the module normalises tokens itself
    assert get_loss("filip", chunk_size=2)(out).total.item() == pytest.approx(ref.item(), rel=1e-12)
    with pytest.raises(UsageError, match="image_tokens"):
        get_loss("filip")(CLIPOutput(x[:, 0], y[:, 0], torch.tensor(s)))


def test_distill_matches_numpy_with_teacher_ensemble():
    img, txt = _unit(5, 4, seed=9), _unit(5, 4, seed=10)
    t_img, t_txt = _unit(2, 5, 3, seed=11), _unit(2, 5, 3, seed=12)        # E = 2 teachers, Dt = 3
    s = 7.0

    def probs(rows, cols):   # average of the teachers' softmaxes, at scale 100
        return np.mean([np.exp(np.stack([_log_softmax(100 * cols[e] @ rows[e][i]) for i in range(5)]))
                        for e in range(2)], axis=0)

    p_it, p_ti = probs(t_img.numpy(), t_txt.numpy()), probs(t_txt.numpy(), t_img.numpy())
    logq_it = np.stack([_log_softmax(s * txt.numpy() @ img.numpy()[i]) for i in range(5)])
    logq_ti = np.stack([_log_softmax(s * img.numpy() @ txt.numpy()[i]) for i in range(5)])
    kd = 0.5 * (-(p_it * logq_it).sum(1).mean() - (p_ti * logq_ti).sum(1).mean())
    assert distill_loss(img, txt, t_img, t_txt, s).item() == pytest.approx(kd, rel=1e-12)
    loss = get_loss("clip+distill", clip_weight=0.3, distill_weight=0.7)
    res = loss(CLIPOutput(img, txt, torch.tensor(s, dtype=torch.float64)),
               {"teacher_image_embeds": t_img, "teacher_text_embeds": t_txt})
    ref = 0.3 * clip_loss(img, txt, torch.tensor(s, dtype=torch.float64)).item() + 0.7 * kd
    assert res.total.item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(UsageError, match="teacher"):
        loss(CLIPOutput(img, txt, torch.tensor(s)), {})
