"""rliable's aggregate of one [runs, tasks] score matrix, as every report here uses it: IQM, median and mean with
95% stratified bootstrap CIs, reproducible (fixed seeds for rliable and for arch's draws from numpy's generator)."""

from __future__ import annotations

import warnings

import numpy as np

METRICS = ("iqm", "median", "mean")


def interval_estimates(matrix, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [3], CIs [2, 3]) of IQM, median and mean over `matrix` [runs, tasks]."""
    from rliable import library as rly
    from rliable import metrics

    func = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x)])
    with warnings.catch_warnings():  # arch's FutureWarning about random_state, which rliable 1.2 passes
        warnings.simplefilter("ignore", FutureWarning)
        np.random.seed(0)
        points, ci = rly.get_interval_estimates({"x": np.asarray(matrix, float)}, func, reps=reps,
                                                random_state=np.random.RandomState(0))
    return points["x"], ci["x"]
