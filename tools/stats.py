"""The statistics of a comparison's claims, in the standard library alone, each formula stated here to be checked.

A claim says arm a beats arm b. Its data: the test accuracies of both arms by seed, paired by seed.

    paired(a, b)      the differences d_s = a_s - b_s over the seeds both have, n of them (n >= 2), their mean
                      d = sum d_s / n and sample standard deviation sd = sqrt(sum (d_s - d)^2 / (n - 1)), and the
                      95% confidence interval d ± t_{0.975, n-1} sd / sqrt(n) (Student's t on the differences)
    p_value(ci)       the two-sided p of the paired t-test: P(|T| >= |t|), t = d / (sd / sqrt(n)), T Student's t with
                      n - 1 degrees of freedom (sd = 0: p = 0 when d != 0, else 1)
    t_two_sided(t, df)  P(|T| >= |t|) by the closed forms of Abramowitz & Stegun 26.7.3-4 (see the function)
    t_quantile(alpha, df)  the t with P(|T| >= t) = alpha, by bisection of t_two_sided
    t_interval(ci, alpha)  d ± t_{1 - alpha/2, n-1} sd / sqrt(n), the interval of level 1 - alpha
    bonferroni(ci, m) the interval of level 1 - 0.05 / m: it holds for m claims at once
    holm(ps)          Holm's step-down correction of m p-values tested together: sorted ascending, the i-th smallest
                      (i = 1..m) becomes min(1, (m - i + 1) p_(i)), then the running maximum (the order is kept)
    verdict(ci, claimed, p)  'holds' when the 95% interval excludes 0 and d > 0 (given a corrected p: p < 0.05 and
                      d > 0), 'does not hold: the opposite order' when it excludes 0 and d < 0, else 'cannot tell at
                      this scale'; a claimed size is said to lie inside or outside the interval
    claim_verdicts(claims, by_arm)  every claim with runs of both arms, its interval, p, Holm-corrected p and both
                      verdicts; the claims of a table form one family (m = the claims testable), the final epoch's
                      accuracy and the val-selected one each their own

    ci = paired({1: 81.0, 2: 82.5}, {1: 80.0, 2: 80.5})  # n, mean, sd, diffs, low, high
"""
import math
import statistics


def paired(a: dict, b: dict):
    """a, b: seed -> accuracy. The mean paired difference a - b over their common seeds with its 95% confidence
    interval (Student's t on the differences); None with fewer than two common seeds."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return None
    return t_interval(dict(n=len(diffs), mean=statistics.mean(diffs), sd=statistics.stdev(diffs), diffs=diffs), 0.05)


def p_value(ci):
    """Two-sided p of the paired t-test behind a confidence interval: P(|T| >= |t|), t = mean / (sd / sqrt(n)),
    T Student's t with n - 1 degrees of freedom; None with fewer than two seeds."""
    if ci is None:
        return None
    if ci['sd'] == 0:
        return 0.0 if ci['mean'] != 0 else 1.0
    return t_two_sided(ci['mean'] / (ci['sd'] / math.sqrt(ci['n'])), ci['n'] - 1)


def t_two_sided(t, df):
    """P(|T| >= |t|) for Student's t with an integer df, by the closed forms of Abramowitz & Stegun 26.7.3-4, with
    theta = atan(|t| / sqrt(df)) and c = cos^2 theta:
        df odd:  P(|T| < t) = (2 / pi) (theta + sin theta cos theta (1 + 2/3 c + 2 4 / (3 5) c^2 + ...)),
                 (df - 1) / 2 terms in the series (none for df = 1)
        df even: P(|T| < t) = sin theta (1 + 1/2 c + 1 3 / (2 4) c^2 + ...), df / 2 terms"""
    theta = math.atan(abs(t) / math.sqrt(df))
    c = math.cos(theta) ** 2
    term, series = 1.0, 0.0
    if df % 2:
        for k in range((df - 1) // 2):  # odd: the series is empty for df = 1
            series += term
            term *= c * (2 * k + 2) / (2 * k + 3)
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    else:
        for k in range(df // 2):
            series += term
            term *= c * (2 * k + 1) / (2 * k + 2)
        inside = math.sin(theta) * series
    return max(0.0, 1.0 - inside)


def t_quantile(alpha, df):
    """The t with P(|T| >= t) = alpha, Student's t with an integer df: t_two_sided, which falls as t grows,
    inverted by bisection."""
    low, high = 0.0, 1.0
    while t_two_sided(high, df) > alpha:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided(mid, df) > alpha else (low, mid)
    return (low + high) / 2


def t_interval(ci, alpha):
    """ci (n, mean, sd of the differences) with its Student's t interval of level 1 - alpha:
    mean ± t_{1 - alpha / 2, n - 1} sd / sqrt(n)."""
    half = t_quantile(alpha, ci['n'] - 1) * ci['sd'] / math.sqrt(ci['n'])
    return {**ci, 'low': ci['mean'] - half, 'high': ci['mean'] + half}


def bonferroni(ci, m):
    """The paired CI widened to hold for m claims at once (Bonferroni): level 1 - 0.05 / m. Holm's correction gives
    p-values, not intervals; a claimed size is read against this one beside them."""
    return {**t_interval(ci, 0.05 / m), 'level': f'{100 - 5 / m:.4g}% Bonferroni '}


def holm(ps):
    """Holm's step-down correction of m p-values for testing them together: sorted ascending, the i-th smallest
    (i = 1..m) becomes min(1, (m - i + 1) p_(i)), then the running maximum, so that the order is kept. None (an
    untestable claim) is left out of the family and stays None."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted, running = [None] * len(ps), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(ci, claimed=None, p=None):
    """holds / the opposite order / cannot tell: from the 95% CI (does it exclude 0?), or, given p (a corrected
    p-value), from p < 0.05 in the direction of the mean. A claimed size is read against ci (with a corrected p,
    the interval bonferroni() widened)."""
    if ci is None:
        return 'cannot tell: fewer than two seeds'
    inside = claimed is not None and ci['low'] <= claimed <= ci['high']
    where = 'the interval' if 'level' not in ci else f'the {ci["level"]}interval [{ci["low"]:+.2f}, {ci["high"]:+.2f}]'
    size = '' if claimed is None else f'; the claimed +{claimed:g} is {"inside" if inside else "outside"} {where}'
    significant = (ci['low'] > 0 or ci['high'] < 0) if p is None else p < 0.05
    if significant and ci['mean'] > 0:
        return 'holds' + size
    if significant:
        return 'does not hold: the opposite order' + size
    return 'cannot tell at this scale' + size


def claim_verdicts(claims, by_arm):
    """claims: (arm a, arm b, the claimed gain of a over b or None, what the paper says); by_arm: arm -> its 'accs'
    and 'val_selected' (seed -> accuracy). Every claim whose two arms are in by_arm: the paired CI, raw and
    Holm-corrected verdicts, on the final epoch's accuracy and on the val-selected one (each its own family)."""
    tested = [dict(a=a, b=b, paper=paper, claimed=claimed) for a, b, claimed, paper in claims
              if a in by_arm and b in by_arm]
    for key, suffix in (('accs', ''), ('val_selected', '_val_selected')):
        cis = [paired(by_arm[c['a']][key], by_arm[c['b']][key]) for c in tested]
        ps = [p_value(ci) for ci in cis]
        m = sum(p is not None for p in ps)  # the claims tested together
        for c, ci, p, p_holm in zip(tested, cis, ps, holm(ps)):
            c.update({f'ci{suffix}': ci, f'p{suffix}': p, f'p_holm{suffix}': p_holm,
                      f'verdict{suffix}': verdict(ci, c['claimed']),
                      f'verdict_holm{suffix}': verdict(bonferroni(ci, m), c['claimed'], p_holm) if p_holm is not None
                      else verdict(None)})
    return tested
