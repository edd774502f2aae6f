"""PAA's two-Gaussian split (``fit_two_gaussians``): against a float64 per-row EM loop
written from scikit-learn's GaussianMixture algorithm, and against GaussianMixture's own
outputs recorded in this folder (scikit-learn is not a dependency): 4 hand-made rows
below (scikit-learn's default reg_covar 1e-6, PAA's) and 60 random rows at the published
RS-PAA's 1e-5 in data/paa_gmm_sklearn.json (written by record_paa_gmm_sklearn.py)."""
import json
import math
import os

import numpy as np
import pytest
import torch

from rs_detectron2.modeling.meta_arch.paa_gmm import fit_two_gaussians

# GaussianMixture(2, weights_init=[.5, .5], means_init=[[min], [max]],
# precisions_init=[[[1]], [[1]]]).fit(x): predict_proba(x)[:, 0] and score_samples(x),
# scikit-learn 1.x, float64, rounded to 1e-10.
RECORDED = [
    ([0.31, 0.45, 0.52, 1.9, 2.2, 2.4, 0.38, 2.05, 0.6],
     [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0],
     [-0.1942152131, 0.7771637981, 0.5545561081, -0.866569419, -0.0994685489, -1.0492124833,
      0.5275733577, -0.1542614682, -0.278054473]),
    ([1.2, 1.25, 1.3, 1.28, 3.1],
     [1.0, 1.0, 1.0, 1.0, 0.0],
     [0.9721776238, 2.1167453294, 1.5004396418, 1.958266724, 4.3793788333]),
    ([0.05, 0.9, 0.95, 1.0, 1.1, 1.02, 0.97, 2.5, 2.6, 0.1, 0.12],
     [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0001120122, 4.052e-05, 1.0, 1.0],
     [-1.3899571503, -0.3907515206, -0.4549781242, -0.5328717728, -0.7296602052,
      -0.5678560049, -0.4844955383, -0.1279543799, -0.1279544071, -1.2218439883,
      -1.1584254961]),
    ([0.7, 0.7, 0.7, 1.4],
     [1.0, 1.0, 1.0, 0.0],
     [5.7011346733, 5.7011346733, 5.7011346733, 4.6025223847]),
]


def _batch(rows):
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), 123.0, dtype=torch.float64)  # padding, not valid
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
        valid[i, : len(r)] = True
    return x, valid


def test_matches_recorded_scikit_learn_outputs_in_one_batch():
    x, valid = _batch([r for r, _, _ in RECORDED])
    prob, loglik = fit_two_gaussians(x, valid, reg_covar=1e-6)
    for i, (row, expected_prob, expected_ll) in enumerate(RECORDED):
        n = len(row)
        np.testing.assert_allclose(prob[i, :n].numpy(), expected_prob, atol=1e-6)
        np.testing.assert_allclose(loglik[i, :n].numpy(), expected_ll, atol=1e-6)
        assert bool((prob[i, n:] == 0).all()) and bool(torch.isinf(loglik[i, n:]).all())


def _load_recorded():
    with open(os.path.join(os.path.dirname(__file__), "data", "paa_gmm_sklearn.json")) as f:
        return json.load(f)


def test_matches_sixty_recorded_random_scikit_learn_fits_labels_exactly():
    """All 60 rows in one batch: GaussianMixture.predict's labels exactly (component 0 =
    foreground, the argmax of the posterior), score_samples to 1e-4 (measured: ~1e-12),
    predict_proba[:, 0] to 1e-6."""
    recorded = _load_recorded()
    cases = recorded["cases"]
    assert len(cases) >= 50 and recorded["reg_covar"] == 1e-5
    x, valid = _batch([c["x"] for c in cases])
    prob, loglik = fit_two_gaussians(x, valid)  # the default reg_covar is the published 1e-5
    mixed = 0
    for i, case in enumerate(cases):
        n = len(case["x"])
        labels = (prob[i, :n] < 0.5).long().tolist()  # 0 = foreground component
        assert labels == case["labels"], i
        np.testing.assert_allclose(loglik[i, :n].numpy(), case["log_likelihood"], atol=1e-4)
        np.testing.assert_allclose(prob[i, :n].numpy(), case["foreground"], atol=1e-6)
        mixed += 0 < sum(case["labels"]) < n
    assert mixed >= 25  # most rows split into two non-empty components


def _reference(row, max_iter=100, tol=1e-3, reg=1e-5):
    """scikit-learn's EM for a 1-D two-component mixture, written out per row."""
    x = np.asarray(row, dtype=np.float64)
    w, mu, var = np.array([0.5, 0.5]), np.array([x.min(), x.max()]), np.array([1.0, 1.0])

    def wlp():
        return (-0.5 * (math.log(2 * math.pi) + np.log(var)[None] + (x[:, None] - mu[None]) ** 2
                        / var[None]) + np.log(w)[None])

    lower = -np.inf
    for _ in range(max_iter):
        a = wlp()
        norm = np.logaddexp(a[:, 0], a[:, 1])
        resp = np.exp(a - norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
        mu = (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - mu[None]) ** 2).sum(0) / nk + reg
        w = nk / nk.sum()
        new_lower = norm.mean()
        if abs(new_lower - lower) < tol:
            break
        lower = new_lower
    a = wlp()
    norm = np.logaddexp(a[:, 0], a[:, 1])
    return np.exp(a[:, 0] - norm), norm


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_per_row_loop_on_random_batches(seed):
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(int(g.integers(1, 8))):
        n = int(g.integers(2, 40))
        fg = g.normal(g.uniform(0, 1), g.uniform(0.05, 0.5), size=int(g.integers(1, n + 1)))
        bg = g.normal(g.uniform(1, 3), g.uniform(0.05, 1.0), size=n - len(fg))
        row = np.concatenate([fg, bg])
        if seed % 5 == 0:
            row = np.round(row, 1)  # ties
        rows.append(g.permutation(row).tolist())
    x, valid = _batch(rows)
    prob, loglik = fit_two_gaussians(x, valid)
    for i, row in enumerate(rows):
        p_ref, ll_ref = _reference(row)
        np.testing.assert_allclose(prob[i, : len(row)].numpy(), p_ref, atol=1e-9)
        np.testing.assert_allclose(loglik[i, : len(row)].numpy(), ll_ref, atol=1e-9)


def test_rows_with_fewer_than_two_candidates_keep_them_and_shapes_are_checked():
    x, valid = _batch([[0.4], [0.2, 0.9, 1.7]])
    prob, loglik = fit_two_gaussians(x, valid)
    assert float(prob[0, 0]) == 1.0 and float(loglik[0, 0]) == 0.0
    assert prob.shape == x.shape and loglik.shape == x.shape
    assert 0.0 < float(prob[1, 1]) <= 1.0
    with pytest.raises(ValueError, match=r"\(G, M\)"):
        fit_two_gaussians(x[0], valid[0])
