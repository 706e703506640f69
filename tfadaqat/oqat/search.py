"""Evolutionary search for the best sub-network under a BitOPs (and weight-memory) budget.

The search keeps a population of configs that meet the budget, scores each once with a
user-given ``evaluate(config) -> float`` (OQAT: validation accuracy of the supernet running
that config, after BatchNorm recalibration), keeps the best ``parents`` and refills the
population with mutations and crossovers of them. A candidate over budget is redrawn, never
kept: every config the search scores, and so the one it returns, meets the budget.

References:
  Cai et al., Once-for-All, arXiv:1908.09791 (section 3.4); Shen et al., OQAT,
  arXiv:2010.04354.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from tfadaqat.oqat.architecture import SupernetSpec, subnet_cost
from tfadaqat.oqat.space import SearchSpace, SubnetConfig

_REDRAWS = 100  # candidates drawn before falling back to a parent that meets the budget


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A scored sub-network and its cost (:func:`subnet_cost`)."""

    config: SubnetConfig
    cost: Dict[str, float]
    score: float


@dataclasses.dataclass
class SearchResult:
    """What :func:`evolutionary_search` found.

    Attributes:
      best: The highest-scoring candidate (all candidates meet the budget).
      candidates: Every candidate scored, in the order scored.
    """

    best: Candidate
    candidates: List[Candidate]

    def pareto_front(self) -> List[Candidate]:
        """Candidates no other candidate beats on both BitOPs (lower) and score (higher),
        by increasing BitOPs."""
        front, best_score = [], -np.inf
        for candidate in sorted(self.candidates, key=lambda c: (c.cost["bitops"], -c.score)):
            if candidate.score > best_score:
                front.append(candidate)
                best_score = candidate.score
        return front

    def to_json(self) -> str:
        return json.dumps({"best": _as_dict(self.best),
                           "pareto_front": [_as_dict(c) for c in self.pareto_front()],
                           "candidates": [_as_dict(c) for c in self.candidates]}, indent=2)


def _as_dict(candidate: Candidate) -> Dict[str, Any]:
    return {"config": candidate.config.to_dict(), "cost": candidate.cost,
            "score": candidate.score}


def evolutionary_search(space: SearchSpace, spec: SupernetSpec,
                        evaluate: Callable[[SubnetConfig], float], *, bitops_budget: float,
                        weight_bits: int, activation_bits: int,
                        weight_kb_budget: Optional[float] = None, population: int = 50,
                        generations: int = 10, parents: int = 10,
                        mutation_probability: float = 0.1, seed: int = 0,
                        progress: Optional[Callable[[str], Any]] = None) -> SearchResult:
    """Finds the config with the best `evaluate` score among those within the budget.

    Args:
      space: The search space.
      spec: The supernet skeleton (for the costs).
      evaluate: Score of a config, higher is better; called once per distinct config.
      bitops_budget: Largest BitOPs of the searchable blocks (:func:`subnet_cost`).
      weight_bits: Bit-width of the weights, for the costs.
      activation_bits: Bit-width of the activations, for the costs.
      weight_kb_budget: Optional largest weight memory, KB.
      population: Configs per generation.
      generations: Rounds of selection.
      parents: Best configs kept each round; half the rest are mutations, half crossovers.
      mutation_probability: Chance to redraw each choice in a mutation.
      seed: Seed of the search's random choices.
      progress: Called with one line per generation.

    Returns:
      A :class:`SearchResult`.

    Raises:
      ValueError: If even the smallest config is over the budget (the message gives its
        cost, the least any config can have), or for bad sizes.
    """
    spec.check(space)
    for name, value in (("population", population), ("generations", generations),
                        ("parents", parents)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if parents > population:
        raise ValueError(f"parents ({parents}) must not exceed population ({population})")

    def cost(config):
        return subnet_cost(config, spec, weight_bits=weight_bits,
                           activation_bits=activation_bits)

    def within(config) -> bool:
        values = cost(config)
        return values["bitops"] <= bitops_budget and (
            weight_kb_budget is None or values["weight_kb"] <= weight_kb_budget)

    smallest = space.smallest()
    if not within(smallest):
        least = cost(smallest)
        raise ValueError(
            f"budget bitops={bitops_budget:,.6g}"
            + ("" if weight_kb_budget is None else f", weight_kb={weight_kb_budget:,.4g}")
            + f" is below the smallest sub-network's cost (bitops={least['bitops']:,.6g}, "
            f"weight_kb={least['weight_kb']:,.4g} at {weight_bits}/{activation_bits} bits)")

    rng = np.random.default_rng(seed)
    scored: Dict[SubnetConfig, Candidate] = {}

    def score(config) -> Candidate:
        if config not in scored:
            scored[config] = Candidate(config, cost(config), float(evaluate(config)))
        return scored[config]

    def draw(make, fallback):
        for _ in range(_REDRAWS):
            config = make()
            if within(config):
                return config
        return fallback

    members = [smallest] + [draw(lambda: space.sample(rng), smallest)
                            for _ in range(population - 1)]
    for generation in range(generations):
        ranked = sorted((score(config) for config in set(members)), key=lambda c: -c.score)
        elite = [candidate.config for candidate in ranked[:parents]]
        if progress is not None:
            progress(f"generation {generation + 1}/{generations}: best score "
                     f"{ranked[0].score:.4f} at {ranked[0].cost['bitops']:,.0f} BitOPs "
                     f"({len(scored)} configs scored)")
        children = []
        while len(elite) + len(children) < population:
            first = elite[int(rng.integers(len(elite)))]
            if len(children) % 2 == 0:
                child = draw(lambda: space.mutate(first, rng, mutation_probability), first)
            else:
                second = elite[int(rng.integers(len(elite)))]
                child = draw(lambda: space.crossover(first, second, rng), first)
            children.append(child)
        members = elite + children
    for config in set(members):
        score(config)
    candidates = list(scored.values())
    return SearchResult(max(candidates, key=lambda c: c.score), candidates)
