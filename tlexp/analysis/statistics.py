"""Statistics for comparing runs: the paired t-test over seeds, from scipy.

Why paired: the same seed gives two strategies the same data order and initialisation where they
share them, so the per-seed differences remove most of the run-to-run noise; an unpaired test
would throw that away.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test of ``a`` against ``b``: (t, p); (nan, nan) with fewer than 2 pairs.

    Zero variance of the differences gives (nan, nan) when they are all zero and (±inf, 0)
    otherwise (scipy's ``ttest_rel``).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if len(a) < 2:
        return float("nan"), float("nan")
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-variance differences: scipy warns, returns inf/nan
        r = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    return float(r.statistic), float(r.pvalue)
