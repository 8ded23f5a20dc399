"""The threshold navigator of Invisible Entropy, on the detection side over one text.

For every ``tau`` of the grid the detector scores the tokens the tagger calls high-entropy
(predicted ``H > tau``): ``G(tau)`` of them are green, ``N(tau)`` are scored, and
``WR(tau) = N(tau) / total`` is the watermark ratio. Gu et al.'s rule (their released code, the
"left" direction) scans the grid from high ``tau`` down and selects ``tau + step`` at the first step
where ``G(tau + step) / G(tau) > 1`` and ``WR(tau + step) / WR(tau) < 1``: raising the threshold
scored fewer tokens yet found more green ones; if no step qualifies it keeps the second-highest
``tau`` (1.2 on the default grid).

Their ``G(tau)`` and ``WR(tau)`` come from separate generations, one per ``tau``. Over one text the
scored sets are nested (a higher ``tau`` scores a subset), so ``G`` cannot grow with ``tau`` and the
rule as written never fires. Its one-text form compares the ratios instead: select ``tau + step``
when ``G(tau + step) / G(tau) > WR(tau + step) / WR(tau)``, i.e. when the green *fraction* rises as
the band ``(tau, tau + step]`` is dropped -- the band's tokens were less green than the rest, the
sign that they were not marked. (Where the paper's condition holds, this one holds too.)

Honest p-value: the choice depends on the green counts, so the p-value of the selected ``tau``
alone is too small. :func:`navigate` reports it Bonferroni-corrected for the number of
thresholds the rule can select (``p * len(candidates)``, capped at 1), which is a valid p-value
whatever the rule picks; the uncorrected one is kept in the details.

>>> navigate([0.3, 0.6, 0.9], green=[30, 25, 10], scored=[60, 40, 30])
(1, [0.6, 0.9])
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["navigate"]


def navigate(taus: Sequence[float], green: Sequence[int], scored: Sequence[int]) -> tuple[int, list[float]]:
    """Pick a threshold: returns ``(index into taus, the taus the rule could have picked)``.

    ``green[k]`` and ``scored[k]`` are ``G`` and ``N`` at ``taus[k]`` (ascending); ``WR`` ratios are
    ratios of ``N`` (the text's length cancels).
    """
    k_last = len(taus) - 1
    if k_last < 1:
        return 0, list(taus)
    candidates = list(taus[1:])
    for k in range(k_last - 1, -1, -1):  # e = taus[k], next = taus[k + 1], from the top down
        if scored[k + 1] == 0 or green[k] == 0:
            continue
        wr_ratio = scored[k + 1] / scored[k]  # WR(next) / WR(e): total cancels
        g_ratio = green[k + 1] / green[k]
        if g_ratio > wr_ratio:
            return k + 1, candidates
    return k_last - 1, candidates
