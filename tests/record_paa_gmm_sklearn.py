"""Development tool (not a test): record scikit-learn's GaussianMixture outputs for
tests/test_paa_gmm.py, as the published RS-PAA calls it, on random candidate-score rows.

    python tests/record_paa_gmm_sklearn.py  # needs scikit-learn; writes tests/data/paa_gmm_sklearn.json

The rows mimic PAA's candidate scores (focal + GIoU losses of up to 5 levels x 9 anchors
of one ground truth): a low foreground cluster and a high background one, some with ties.
"""
import json
import os

import numpy as np
from sklearn.mixture import GaussianMixture

REG_COVAR = 1e-5  # the published RS-PAA's (rank_based_paa_head.py)
NUM_CASES = 60


def main() -> None:
    g = np.random.default_rng(20261201)
    cases = []
    for i in range(NUM_CASES):
        n = int(g.integers(2, 46))
        num_fg = int(g.integers(1, n + 1))
        fg = g.gamma(2.0, g.uniform(0.05, 0.4), size=num_fg) + g.uniform(0.1, 0.6)
        bg = g.normal(g.uniform(1.0, 2.5), g.uniform(0.05, 0.6), size=n - num_fg)
        row = np.concatenate([fg, bg])
        if i % 6 == 0:
            row = np.round(row, 1)  # ties
        row = np.sort(row)  # published: sorted before the fit
        x = row.reshape(-1, 1)
        gmm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                              precisions_init=[[1.0], [1.0]], covariance_type="diag",
                              reg_covar=REG_COVAR)
        gmm.fit(x)
        cases.append({"x": row.tolist(), "labels": gmm.predict(x).tolist(),
                      "foreground": gmm.predict_proba(x)[:, 0].tolist(),
                      "log_likelihood": gmm.score_samples(x).tolist()})
    out = os.path.join(os.path.dirname(__file__), "data", "paa_gmm_sklearn.json")
    import sklearn
    with open(out, "w") as f:
        json.dump({"generator": "tests/record_paa_gmm_sklearn.py", "sklearn": sklearn.__version__,
                   "reg_covar": REG_COVAR, "cases": cases}, f)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
