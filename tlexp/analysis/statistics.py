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


def t_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` confidence interval of the mean of ``differences`` (Student t); (nan, nan) below 2."""
    d = np.asarray(differences, float)
    if d.size < 2:
        return float("nan"), float("nan")
    from scipy import stats

    sem = d.std(ddof=1) / np.sqrt(d.size)
    if sem == 0:
        return float(d.mean()), float(d.mean())
    lo, hi = stats.t.interval(level, d.size - 1, loc=d.mean(), scale=sem)
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate): ``p_(i)`` becomes
    ``max_{j<=i} min(1, (m - j + 1) p_(j))`` in ascending order; returned in the input order."""
    p = np.asarray(pvalues, float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()
