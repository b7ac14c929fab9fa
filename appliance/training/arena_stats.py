"""Arena statistics: the score of a W/D/L tally, the Elo difference it implies and a 95 %
interval for it.

The interval is the normal approximation over per-game scores (1, 1/2, 0) that cutechess-cli and
fishtest report: the score's standard error is the sample standard deviation of the game scores
over sqrt(games), the score interval is score +- 1.96 standard errors, and both ends are mapped to
Elo with the logistic curve `elo = -400 log10(1/score - 1)`. A score of 0 or 1 maps to -inf or
+inf (in JSON the strings "+inf" and "-inf"): the games say one side is stronger, not by how
much. With no spread at all (every game won, or every game drawn) the interval has width 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal distribution


@dataclass(frozen=True)
class Tally:
    """Results from one player's side."""

    wins: int
    draws: int
    losses: int

    def __post_init__(self) -> None:
        if min(self.wins, self.draws, self.losses) < 0:
            raise ValueError(f"negative count in W/D/L {self.wins}/{self.draws}/{self.losses}")

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def points(self) -> float:
        return self.wins + self.draws / 2

    @property
    def score(self) -> float:
        if self.games == 0:
            raise ValueError("no games: the score is undefined")
        return self.points / self.games


def elo_from_score(score: float) -> float:
    """Elo difference that makes `score` the expected score (logistic model)."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1], got {score}")
    if score == 0.0:
        return -math.inf
    if score == 1.0:
        return math.inf
    return -400.0 * math.log10(1.0 / score - 1.0) + 0.0  # + 0.0: no "-0.0" at score 1/2


@dataclass(frozen=True)
class EloEstimate:
    score: float
    stderr: float  # of the score
    elo: float
    low: float  # 95 % interval of the Elo difference
    high: float

    @property
    def excludes_zero(self) -> bool:
        """The 95 % interval lies wholly above or wholly below an Elo difference of 0."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | str:
            return format_elo(x) if math.isinf(x) else round(x, 2)

        return {"score": round(self.score, 6), "score_stderr": round(self.stderr, 6),
                "elo": num(self.elo), "elo_low": num(self.low), "elo_high": num(self.high),
                "interval": 0.95, "excludes_zero": self.excludes_zero}


def estimate(tally: Tally) -> EloEstimate:
    n = tally.games
    s = tally.score
    variance = (tally.wins * (1.0 - s) ** 2 + tally.draws * (0.5 - s) ** 2
                + tally.losses * s**2) / n
    stderr = math.sqrt(variance / n)
    low = max(0.0, s - Z95 * stderr)
    high = min(1.0, s + Z95 * stderr)
    return EloEstimate(score=s, stderr=stderr, elo=elo_from_score(s),
                       low=elo_from_score(low), high=elo_from_score(high))


def format_elo(x: float) -> str:
    return ("+inf" if x > 0 else "-inf") if math.isinf(x) else f"{x:+.1f}"
