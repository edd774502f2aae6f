"""PAA's split of a ground truth's candidate anchors into positives and negatives: a
two-component 1-D Gaussian mixture fitted to the candidates' scores by EM, batched over
all ground truths of a batch (Kim & Lee, ECCV 2020; the published PAA fits scikit-learn's
``GaussianMixture`` one ground truth at a time).

The settings are scikit-learn's as the published RS-PAA calls it: means initialised at the
smallest and the largest score, equal weights, unit variances, variances regularised by
1e-5 (``reg_covar``; PAA's own code keeps scikit-learn's 1e-6), at most 100 EM
iterations, stopping when the mean log-likelihood changes by less than 1e-3. PAA's
scores are losses (lower is better), so component 0, started at the minimum, is the
foreground one. This module is torch only (no scikit-learn).
"""
import math
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["fit_two_gaussians"]

REG_COVAR = 1e-5  # the published RS-PAA's
_LOG_2PI = math.log(2.0 * math.pi)


def _weighted_log_prob(x: Tensor, weights: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """log(w_k) + log N(x | mu_k, var_k) for both components: (G, M, 2)."""
    diff = x[..., None] - means[:, None, :]
    log_normal = -0.5 * (_LOG_2PI + variances.log()[:, None, :] + diff * diff / variances[:, None, :])
    return log_normal + weights.log()[:, None, :]


def fit_two_gaussians(x: Tensor, valid: Tensor, max_iter: int = 100, tol: float = 1e-3,
                      reg_covar: float = REG_COVAR) -> Tuple[Tensor, Tensor]:
    """Fit a two-component Gaussian mixture to each row's valid entries, all rows at once.

    Args:
        x: (G, M) scores, one row per ground truth (its candidates' scores).
        valid: (G, M) bool, the entries of each row that take part.
        max_iter, tol: EM iterations at most, and the change of the mean log-likelihood of
            a row below which it stops (each row stops on its own).
        reg_covar: added to every fitted variance.

    Returns:
        ``(foreground_probability, log_likelihood)``, both of the shape of ``x`` (float64):
        the posterior of component 0 (initialised at the row's minimum) and the mixture's
        log density, per entry, with the fitted parameters (scikit-learn's
        ``predict_proba(...)[:, 0]`` and ``score_samples``). Invalid entries get 0 and
        -inf; a row with fewer than 2 valid entries is not fitted (probability 1,
        log-likelihood 0 for its valid entries; PAA's assignment gives such a ground truth
        no positive, :func:`~.paa.paa_select`).
    """
    if x.shape != valid.shape or x.dim() != 2:
        raise ValueError(f"fit_two_gaussians: x and valid must be (G, M) alike, got "
                         f"{tuple(x.shape)} and {tuple(valid.shape)}")
    xd = x.detach().double()
    valid = valid.bool()
    count = valid.sum(1)
    fitted = count >= 2
    big = torch.finfo(torch.float64).max
    lo = torch.where(valid, xd, torch.full_like(xd, big)).min(1).values
    hi = torch.where(valid, xd, torch.full_like(xd, -big)).max(1).values
    means = torch.stack([lo, hi], 1).where(fitted[:, None], torch.zeros(len(xd), 2, dtype=xd.dtype, device=xd.device))
    weights = torch.full_like(means, 0.5)
    variances = torch.ones_like(means)
    xv = torch.where(valid, xd, torch.zeros_like(xd))
    mask = valid[..., None].double()
    n = count.clamp(min=1).double()
    active = fitted.clone()
    lower = torch.full((len(xd),), -math.inf, dtype=xd.dtype, device=xd.device)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # E-step with the current parameters
        wlp = _weighted_log_prob(xv, weights, means, variances)
        norm = torch.logsumexp(wlp, 2)
        resp = (wlp - norm[..., None]).exp() * mask
        new_lower = (norm * valid).sum(1) / n
        # M-step (only rows still running change)
        nk = resp.sum(1) + 10 * torch.finfo(torch.float64).eps
        new_means = (resp * xv[..., None]).sum(1) / nk
        diff = xv[..., None] - new_means[:, None, :]
        new_vars = (resp * diff * diff).sum(1) / nk + reg_covar
        upd = active[:, None]
        weights = torch.where(upd, nk / nk.sum(1, keepdim=True), weights)
        means = torch.where(upd, new_means, means)
        variances = torch.where(upd, new_vars, variances)
        converged = (new_lower - lower).abs() < tol
        lower = torch.where(active, new_lower, lower)
        active = active & ~converged
    wlp = _weighted_log_prob(xv, weights, means, variances)
    log_likelihood = torch.logsumexp(wlp, 2)
    foreground = (wlp[..., 0] - log_likelihood).exp()
    foreground = torch.where(fitted[:, None], foreground, torch.ones_like(foreground))
    log_likelihood = torch.where(fitted[:, None], log_likelihood, torch.zeros_like(log_likelihood))
    foreground = torch.where(valid, foreground, torch.zeros_like(foreground))
    log_likelihood = torch.where(valid, log_likelihood, torch.full_like(log_likelihood, -math.inf))
    return foreground, log_likelihood
