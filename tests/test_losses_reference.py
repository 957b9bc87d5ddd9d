"""The plain PyTorch loss twins against their formulas, written again here as
per-sample float64 loops, plus gradient checks and edge cases."""
import math

import numpy as np
import pytest
import torch

from pplr_fast.losses import classification
from pplr_fast.losses import (aals_loss, cross_entropy_label_smoothing, inter_camera_proxy_loss,
                              pglr_loss, pplr_classification_loss, soft_triplet_loss)


# ---------------------------------------------------------------- formulas
def log_softmax_row(row):
    row = np.asarray(row, dtype=np.float64)
    top = row.max()
    return row - top - math.log(np.exp(row - top).sum())


def pglr_formula(logits_g, logits_p, targets, scores, beta=0.5):
    batch, num_classes, num_parts = logits_p.shape
    total = 0.0
    for i in range(batch):
        w = np.exp(scores[i] - scores[i].max())
        w /= w.sum()
        q = np.zeros(num_classes)
        for n in range(num_parts):
            q += w[n] * np.exp(log_softmax_row(logits_p[i, :, n]))
        t = (1 - beta) * q
        t[targets[i]] += beta
        total += -(t * log_softmax_row(logits_g[i])).sum()
    return total / batch


def aals_formula(logits, targets, score):
    batch, num_classes = logits.shape
    total = 0.0
    for i in range(batch):
        log_p = log_softmax_row(logits[i])
        ce = -log_p[targets[i]]
        kl = sum((1 / num_classes) * (math.log(1 / num_classes) - log_p[c])
                 for c in range(num_classes))
        total += score[i] * ce + (1 - score[i]) * kl
    return total / batch


def label_smoothing_formula(logits, targets, epsilon=0.1):
    batch, num_classes = logits.shape
    total = 0.0
    for i in range(batch):
        t = np.full(num_classes, epsilon / num_classes)
        t[targets[i]] += 1 - epsilon
        total += -(t * log_softmax_row(logits[i])).sum()
    return total / batch


def soft_triplet_formula(features, targets):
    batch = len(features)
    total = 0.0
    for i in range(batch):
        d_ap, d_an = 0.0, math.inf
        for j in range(batch):
            d = float(np.linalg.norm(features[i] - features[j]))
            if targets[j] == targets[i]:
                d_ap = max(d_ap, d)
            else:
                d_an = min(d_an, d)
        if d_an < math.inf:
            total += -math.log(math.exp(d_an) / (math.exp(d_ap) + math.exp(d_an)))
    return total / batch


def proxy_formula(features, targets, cams, proxies, pids, pcams, num_hard=50, temp=0.07):
    batch = len(features)
    total = 0.0
    for i in range(batch):
        f = features[i] / np.linalg.norm(features[i])
        sims = proxies @ f / temp
        positives = [m for m in range(len(proxies))
                     if pids[m] == targets[i] and pcams[m] != cams[i]]
        if not positives:
            continue
        negatives = [m for m in range(len(proxies)) if pids[m] != targets[i]]
        negatives = sorted(negatives, key=lambda m: (-sims[m], m))[:num_hard]
        chosen = sims[positives + negatives]
        log_norm = chosen.max() + math.log(np.exp(chosen - chosen.max()).sum())
        total += -np.mean([sims[m] - log_norm for m in positives])
    return total / batch


def random_inputs(rng, batch, num_classes, num_parts, scale=3.0, dtype=torch.float64):
    logits_g = torch.tensor(rng.normal(size=(batch, num_classes)) * scale, dtype=dtype)
    part_major = torch.tensor(rng.normal(size=(num_parts, batch, num_classes)) * scale, dtype=dtype)
    logits_p = part_major.permute(1, 2, 0)           # the model's layout: C unit-stride
    targets = torch.tensor(rng.integers(0, num_classes, size=batch))
    scores = torch.tensor(rng.random((batch, num_parts)), dtype=dtype)
    return logits_g, logits_p, targets, scores


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("batch,num_classes,num_parts",
                         [(6, 11, 3), (1, 2, 3), (5, 2, 1), (3, 40, 2)])
def test_pglr_matches_formula(rng, batch, num_classes, num_parts):
    g, p, y, s = random_inputs(rng, batch, num_classes, num_parts)
    got = pglr_loss(g, p, y, s, beta=0.3).item()
    want = pglr_formula(g.numpy(), p.numpy(), y.numpy(), s.numpy(), beta=0.3)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("batch,num_classes", [(6, 11), (1, 2), (4, 2), (3, 50)])
def test_aals_and_label_smoothing_match_formula(rng, batch, num_classes):
    g, p, y, s = random_inputs(rng, batch, num_classes, 3)
    for n in range(3):
        logits = p[..., n]
        assert aals_loss(logits, y, s[:, n]).item() == pytest.approx(
            aals_formula(logits.numpy(), y.numpy(), s[:, n].numpy()), rel=1e-12)
        assert cross_entropy_label_smoothing(logits, y, 0.2).item() == pytest.approx(
            label_smoothing_formula(logits.numpy(), y.numpy(), 0.2), rel=1e-12)


def test_label_smoothing_default_epsilon_is_one_tenth(rng):
    # docs/method.md §3: before aals_epoch the parts use label smoothing with epsilon = 0.1.
    _, p, y, _ = random_inputs(rng, 5, 7, 1)
    logits = p[..., 0]
    want = label_smoothing_formula(logits.numpy(), y.numpy(), epsilon=0.1)
    assert cross_entropy_label_smoothing(logits, y).item() == pytest.approx(want, rel=1e-12)
    assert abs(label_smoothing_formula(logits.numpy(), y.numpy(), epsilon=0.11) - want) > 1e-4


def test_part_dimension_means_over_parts(rng):
    g, p, y, s = random_inputs(rng, 5, 9, 3)
    per_part = [aals_loss(p[..., n], y, s[:, n]) for n in range(3)]
    assert aals_loss(p, y, s).item() == pytest.approx(torch.stack(per_part).mean().item(),
                                                      rel=1e-12)
    per_part = [cross_entropy_label_smoothing(p[..., n], y) for n in range(3)]
    assert cross_entropy_label_smoothing(p, y).item() == pytest.approx(
        torch.stack(per_part).mean().item(), rel=1e-12)


@pytest.mark.parametrize("use_aals", [True, False])
def test_classification_is_pglr_plus_mean_part_loss(rng, use_aals):
    g, p, y, s = random_inputs(rng, 6, 13, 3)
    loss_g, loss_p = pplr_classification_loss(g, p, y, s, use_aals=use_aals, epsilon=0.1,
                                              backend="reference")
    assert loss_g.item() == pytest.approx(pglr_formula(g.numpy(), p.numpy(), y.numpy(), s.numpy()),
                                          rel=1e-12)
    parts = [aals_formula(p[..., n].numpy(), y.numpy(), s[:, n].numpy()) if use_aals else
             label_smoothing_formula(p[..., n].numpy(), y.numpy(), 0.1) for n in range(3)]
    assert loss_p.item() == pytest.approx(np.mean(parts), rel=1e-12)


@pytest.mark.parametrize("use_aals", [True, False])
def test_fast_backend_on_cpu_is_the_compiled_twin(rng, use_aals):
    g, p, y, s = random_inputs(rng, 8, 30, 3, dtype=torch.float32)
    results = []
    for backend in ("reference", "fast"):
        g_leaf, p_leaf = g.clone().requires_grad_(), p.detach().requires_grad_()
        loss_g, loss_p = pplr_classification_loss(g_leaf, p_leaf, y, s, use_aals=use_aals,
                                                  backend=backend)
        (0.3 * loss_g + loss_p).backward()
        results.append((loss_g, loss_p, g_leaf.grad, p_leaf.grad))
        p.grad = None
    assert not classification._compile_failed
    for reference, fast in zip(*results):
        assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-7)


def test_fast_backend_falls_back_to_eager_when_compilation_fails(rng, monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(classification, "_compiled_twin", broken)
    monkeypatch.setattr(classification, "_compile_failed", False)
    g, p, y, s = random_inputs(rng, 3, 5, 3)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        got = pplr_classification_loss(g, p, y, s, use_aals=True, backend="fast")
    want = pplr_classification_loss(g, p, y, s, use_aals=True, backend="reference")
    assert [t.item() for t in got] == [t.item() for t in want]
    assert classification._compile_failed


def test_scores_exactly_zero_and_one(rng):
    g, p, y, _ = random_inputs(rng, 4, 7, 3)
    for value in (0.0, 1.0):
        s = torch.full((4, 3), value, dtype=torch.float64)
        per_part = [aals_formula(p[..., n].numpy(), y.numpy(), s[:, n].numpy()) for n in range(3)]
        assert aals_loss(p, y, s).item() == pytest.approx(np.mean(per_part), rel=1e-12)
        assert pglr_loss(g, p, y, s).item() == pytest.approx(
            pglr_formula(g.numpy(), p.numpy(), y.numpy(), s.numpy()), rel=1e-12)
    # A = 1 is plain cross-entropy, A = 0 pure KL to the uniform distribution.
    logits = p[..., 0]
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert aals_loss(logits, y, ones).item() == pytest.approx(ce.item(), rel=1e-12)
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), torch.full_like(logits, 1 / 7),
                                    reduction="sum") / 4
    assert aals_loss(logits, y, zeros).item() == pytest.approx(kl.item(), rel=1e-12)


@pytest.mark.parametrize("use_aals", [True, False])
def test_large_logits_are_finite_and_exact(rng, use_aals):
    batch, num_classes = 4, 9
    g = torch.tensor(np.where(rng.random((batch, num_classes)) < 0.5, -1e4, 1e4))
    p = torch.tensor(rng.choice([-1e4, 1e4, 0.0], size=(3, batch, num_classes))).permute(1, 2, 0)
    y = torch.tensor(rng.integers(0, num_classes, size=batch))
    s = torch.tensor(rng.random((batch, 3)))
    g32, p32 = g.float().requires_grad_(), p.float().requires_grad_()
    loss_g, loss_p = pplr_classification_loss(g32, p32, y, s.float(), use_aals=use_aals,
                                              backend="reference")
    (loss_g + loss_p).backward()
    assert torch.isfinite(g32.grad).all() and torch.isfinite(p32.grad).all()
    assert loss_g.item() == pytest.approx(pglr_formula(g.numpy(), p.numpy(), y.numpy(), s.numpy()),
                                          rel=1e-6)
    parts = [aals_formula(p[..., n].numpy(), y.numpy(), s[:, n].numpy()) if use_aals else
             label_smoothing_formula(p[..., n].numpy(), y.numpy()) for n in range(3)]
    assert loss_p.item() == pytest.approx(np.mean(parts), rel=1e-6)


def test_half_precision_is_computed_in_float32(rng):
    g, p, y, s = random_inputs(rng, 4, 10, 3, dtype=torch.float16)
    loss_g, loss_p = pplr_classification_loss(g, p, y, s, use_aals=True, backend="reference")
    assert loss_g.dtype == loss_p.dtype == torch.float32
    ref_g, ref_p = pplr_classification_loss(g.float(), p.float(), y, s.float(), use_aals=True,
                                           backend="reference")
    assert (loss_g.item(), loss_p.item()) == (ref_g.item(), ref_p.item())


# ---------------------------------------------------------------- gradients
def test_classification_gradcheck(rng):
    g, p, y, s = random_inputs(rng, 3, 5, 2)
    g.requires_grad_()
    p = p.detach().requires_grad_()
    for use_aals in (True, False):
        assert torch.autograd.gradcheck(
            lambda x: pplr_classification_loss(x, p.detach(), y, s, use_aals=use_aals,
                                               backend="reference")[0], (g,))
        assert torch.autograd.gradcheck(
            lambda x: pplr_classification_loss(g.detach(), x, y, s, use_aals=use_aals,
                                               backend="reference")[1], (p,))
    # q is detached: the global loss sends no gradient to the part logits.
    pglr_loss(g, p, y, s).backward()
    assert p.grad is None


def test_single_part_losses_gradcheck(rng):
    _, p, y, s = random_inputs(rng, 4, 2, 1)
    logits = p[..., 0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: aals_loss(x, y, s[:, 0]), (logits,))
    assert torch.autograd.gradcheck(lambda x: cross_entropy_label_smoothing(x, y), (logits,))


def test_scores_get_no_gradient(rng):
    g, p, y, s = random_inputs(rng, 3, 4, 3)
    s.requires_grad_()
    p.requires_grad_()
    (pglr_loss(g, p, y, s) + aals_loss(p, y, s)).backward()
    assert s.grad is None


# ---------------------------------------------------------------- soft triplet
def test_soft_triplet_matches_formula_and_gradcheck(rng):
    x = torch.tensor(rng.normal(size=(8, 5)), requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])                     # label 2: a lone anchor
    want = soft_triplet_formula(x.detach().numpy(), y.numpy())
    assert soft_triplet_loss(x, y).item() == pytest.approx(want, rel=1e-12)
    assert torch.autograd.gradcheck(lambda f: soft_triplet_loss(f, y), (x,))


def test_soft_triplet_self_and_duplicate_pairs_have_finite_gradients(rng):
    base = torch.tensor(rng.normal(size=(3, 4)))
    x = torch.cat([base, base[:1]]).requires_grad_()                # sample 3 duplicates sample 0
    y = torch.tensor([0, 1, 1, 0])
    loss = soft_triplet_loss(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    want = soft_triplet_formula(x.detach().numpy(), y.numpy())
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_soft_triplet_without_negatives_is_zero():
    x = torch.randn(1, 4, requires_grad=True)
    loss = soft_triplet_loss(x, torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = soft_triplet_loss(x, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- camera proxies
def proxy_setup(rng, batch=6, num_clusters=5, num_cams=3, dim=8):
    pids, pcams = zip(*[(c, k) for c in range(num_clusters) for k in range(num_cams)
                        if rng.random() < 0.8])
    proxies = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(len(pids), dim))), dim=1)
    features = torch.tensor(rng.normal(size=(batch, dim)) * 2.0)
    targets = torch.tensor(rng.integers(0, num_clusters, size=batch))
    cams = torch.tensor(rng.integers(0, num_cams, size=batch))
    return features, targets, cams, proxies, torch.tensor(pids), torch.tensor(pcams)


@pytest.mark.parametrize("num_hard", [50, 4, 0])
def test_proxy_loss_matches_formula(rng, num_hard):
    # 50 exceeds every sample's negatives: all of them are used, nothing else.
    f, y, c, proxies, pids, pcams = proxy_setup(rng)
    got = inter_camera_proxy_loss(f, y, c, proxies, pids, pcams, num_hard_negatives=num_hard)
    want = proxy_formula(f.numpy(), y.numpy(), c.numpy(), proxies.numpy(), pids.numpy(),
                         pcams.numpy(), num_hard=num_hard)
    assert got.item() == pytest.approx(want, rel=1e-12)
    f.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: inter_camera_proxy_loss(x, y, c, proxies, pids, pcams,
                                          num_hard_negatives=num_hard), (f,))


def test_proxy_loss_defaults_are_50_negatives_at_temperature_007(rng):
    # docs/method.md §3 (PPLR-CAM): the 50 most similar proxies of other clusters, T = 0.07.
    # 80 one-camera clusters: each sample has 79 negatives, more than 50.
    pids = torch.tensor([0] + list(range(80)))
    pcams = torch.tensor([1] + [0] * 80)
    proxies = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(81, 6))), dim=1)
    f = torch.tensor(rng.normal(size=(3, 6)))
    y, cams = torch.tensor([0, 0, 5]), torch.tensor([0, 0, 1])         # sample 2: no positive
    args = (f.numpy(), y.numpy(), cams.numpy(), proxies.numpy(), pids.numpy(), pcams.numpy())
    want = proxy_formula(*args, num_hard=50, temp=0.07)
    got = inter_camera_proxy_loss(f, y, cams, proxies, pids, pcams)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # the setup can tell the defaults apart from their neighbours
    assert abs(proxy_formula(*args, num_hard=45, temp=0.07) - want) > 1e-9
    assert abs(proxy_formula(*args, num_hard=79, temp=0.07) - want) > 1e-9
    assert abs(proxy_formula(*args, num_hard=50, temp=0.08) - want) > 1e-3


def test_proxy_loss_skips_samples_without_positives(rng):
    proxies = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(6, 5))), dim=1)
    pids, pcams = torch.tensor([0, 0, 1, 1, 2, 3]), torch.tensor([0, 1, 0, 1, 0, 0])
    f = torch.tensor(rng.normal(size=(4, 5)))
    y, cams = torch.tensor([0, 2, 1, 3]), torch.tensor([0, 0, 2, 1])   # sample 1: no positive
    got = inter_camera_proxy_loss(f, y, cams, proxies, pids, pcams)
    want = proxy_formula(f.numpy(), y.numpy(), cams.numpy(), proxies.numpy(), pids.numpy(),
                         pcams.numpy())
    assert got.item() == pytest.approx(want, rel=1e-12)
    f.requires_grad_()
    loss = inter_camera_proxy_loss(f, torch.full((4,), 2), torch.zeros(4, dtype=torch.long),
                                   proxies, pids, pcams)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_proxy_loss_ties_keep_the_lower_proxy_index():
    s = 1 / math.sqrt(2)
    proxies = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0],             # cluster 0: cams 0, 1
                            [s, 0.0, s], [s, 0.0, -s], [s, s, 0.0]], dtype=torch.float64)
    pids, pcams = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([0, 1, 0, 0, 0])
    f = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    # Proxies 2, 3 and 4 tie at similarity s; one hard negative: proxy 2.
    loss = inter_camera_proxy_loss(f, torch.tensor([0]), torch.tensor([0]), proxies, pids, pcams,
                                   num_hard_negatives=1, temperature=0.5)
    loss.backward()
    chosen = proxies[[1, 2]]
    expected = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    logits = torch.nn.functional.normalize(expected, dim=0) @ chosen.t() / 0.5
    (-torch.log_softmax(logits, 0)[0]).backward()
    assert loss.item() == pytest.approx(math.log(1 + math.exp((s - 1) / 0.5)), rel=1e-12)
    assert torch.allclose(f.grad[0], expected.grad)


# ---------------------------------------------------------------- input errors
def test_impossible_inputs_raise(rng):
    g, p, y, s = random_inputs(rng, 4, 6, 3)
    with pytest.raises(ValueError, match="targets must lie"):
        pglr_loss(g, p, torch.tensor([0, 1, 2, 6]), s)
    with pytest.raises(ValueError, match="targets must lie"):
        aals_loss(p, torch.tensor([0, -1, 2, 3]), s)
    with pytest.raises(ValueError, match="NaN"):
        pplr_classification_loss(g, p, y, s.masked_fill(s > 0.5, float("nan")), use_aals=True,
                                 backend="reference")
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        aals_loss(p, y, s + 1)
    with pytest.raises(ValueError, match="does not match"):
        pglr_loss(g[:, :5], p, y, s)
    with pytest.raises(ValueError, match="scores must have shape"):
        pglr_loss(g, p, y, s[:, :2])
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy_label_smoothing(g, y[:3])
    with pytest.raises(ValueError, match="at least 2 classes"):
        cross_entropy_label_smoothing(g[:, :1], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        pplr_classification_loss(g, p, y, s, use_aals=True, backend="cuda")
    with pytest.raises(ValueError, match="beta"):
        pglr_loss(g, p, y, s, beta=1.5)
    with pytest.raises(ValueError, match="proxies must be"):
        inter_camera_proxy_loss(g, y, y, torch.zeros(3, 5), y[:3], y[:3])
