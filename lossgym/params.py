"""The loss parameters: one typed definition that everything else derives from.

:data:`LOSS_PARAMS` lists every parameter of the engine's parametric loss
(:func:`lossgym.losses.parametric_loss`) with its range, its neutral value (the value at which
the parameter changes nothing: plain cross-entropy), its meaning and its source. The action
mapping (:mod:`lossgym.actions`), schedules (:mod:`lossgym.schedules`), the parametric
criterion and its kernel plan (:mod:`lossgym.losses`), :class:`~lossgym.export.AdaptiveLoss`,
PBT and the searches (:mod:`agents`) and the spaces tables of the docs (:func:`markdown_table`,
checked against the README and the env docstring by ``tests/test_params.py``) all read it.

Adding a parameter
------------------
1. Add a :class:`LossParam` to :data:`LOSS_PARAMS` here (name, range, neutral value, meaning,
   paper). From then on the action space, schedules, the export's manifest checks, PBT and the
   searches know it.
2. Say what it does to the loss in :func:`lossgym.losses.parametric.loss_terms` (the one place
   where parameter values become the terms of the modulated cross-entropy: a logit scale or
   shift, class weights, margins, or one of the modulation scalars).

Then regenerate the tables (``python -m lossgym.params``) where the docs show them.
``tests/test_params.py`` adds a throwaway parameter this way and checks that every consumer
picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossParam:
    """One parameter of the parametric loss."""

    name: str
    """the keyword of :func:`lossgym.losses.parametric_loss`."""
    low: float
    """the smallest value an action, schedule or search may set."""
    high: float
    """the largest such value."""
    neutral: float
    """the value at which the parameter changes nothing (episodes start there)."""
    symbol: str
    """how the docs write it."""
    meaning: str
    """what it does, in a few words."""
    paper: str
    """where it comes from."""

    def __post_init__(self) -> None:
        if not self.low <= self.neutral <= self.high or self.low == self.high:
            raise ValueError(f"LossParam {self.name!r}: need low <= neutral <= high and "
                             f"low < high, got {self.low}, {self.neutral}, {self.high}")

    def check(self, value: float, where: str = "") -> float:
        """``value`` as a float if it lies in the range, else a ``ValueError`` naming it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not self.low <= value <= self.high:
            raise ValueError(f"{where or self.name}={value!r} is out of range: {self.name} "
                             f"must be a number in [{self.low:g}, {self.high:g}]")
        return float(value)


#: Every loss parameter, in the canonical order (schedules, tables and manifests use it).
LOSS_PARAMS: list[LossParam] = [
    LossParam("gamma", 0.0, 5.0, 0.0, "γ", "focal exponent γ", "Lin et al. 2017"),
    LossParam("alpha", 0.0, 1.0, 0.0, "α", "class-balance strength, w_c ∝ n_c^(−α)",
              "power-law re-weighting"),
    LossParam("tau", 0.0, 2.0, 0.0, "τ", "logit-adjustment temperature τ",
              "Menon et al. 2021"),
    LossParam("label_smoothing", 0.0, 0.3, 0.0, "ε_ls", "label smoothing",
              "Szegedy et al. 2016"),
    LossParam("poly_epsilon", -1.0, 2.0, 0.0, "ε_poly", "Poly-1 ε", "Leng et al. 2022"),
    LossParam("gate", -5.0, 5.0, 0.0, "g", "gradient-gate strength", "ours (after GHM-C)"),
    LossParam("margin", 0.0, 1.0, 0.0, "Δ", "LDAM margin of the rarest class (∝ n^(−1/4))",
              "Cao et al. 2019"),
    LossParam("scale", 1.0, 30.0, 1.0, "s", "logit scale s (LDAM's s)", "Cao et al. 2019"),
    LossParam("cb", 0.0, 1.0, 0.0, "λ_cb", "mix of effective-number weights (β 0.9999), "
              "w = 1 − λ + λ·w_cb", "Cui et al. 2019; DRW: Cao et al. 2019"),
]


def param(name: str) -> LossParam:
    """The parameter called ``name``; unknown names raise ``ValueError`` listing the known."""
    for p in LOSS_PARAMS:
        if p.name == name:
            return p
    raise ValueError(f"parameter {name!r} is not known; choose from {names()}")


def names() -> list[str]:
    """The parameter names, in canonical order."""
    return [p.name for p in LOSS_PARAMS]


def neutral() -> dict[str, float]:
    """Every parameter at its neutral value (plain cross-entropy)."""
    return {p.name: p.neutral for p in LOSS_PARAMS}


def ranges() -> dict[str, tuple[float, float, float]]:
    """name → (low, high, neutral), in canonical order."""
    return {p.name: (p.low, p.high, p.neutral) for p in LOSS_PARAMS}


def markdown_table() -> str:
    """The parameters as the Markdown table the README and the env docstring show."""
    rows = ["| name | range | neutral | meaning |", "|---|---|---|---|"]
    rows += [f"| `{p.name}` | [{p.low:g}, {p.high:g}] | {p.neutral:g} | {p.meaning} |"
             for p in LOSS_PARAMS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
