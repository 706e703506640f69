"""OQAT's search space: which sub-networks of the once-for-all supernet exist.

A sub-network is a :class:`SubnetConfig`: for each of the supernet's stages a depth (its
first ``depth`` blocks run, the rest are skipped) and, for each running block, a depthwise
kernel size and an expand ratio. :class:`SearchSpace` holds the allowed values (the
once-for-all MobileNetV3 space by default: kernels {3, 5, 7}, expand ratios {3, 4, 6},
depths {2, 3, 4} over 5 stages), checks configs against them and draws, mutates and crosses
configs for the evolutionary search.

References:
  Cai et al., Once-for-All, arXiv:1908.09791; Shen et al., OQAT, arXiv:2010.04354.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: per stage, its depth and its blocks' kernel sizes and expand ratios.

    Attributes:
      depths: Running blocks per stage.
      kernel_sizes: Per stage, the depthwise kernel size of each running block.
      expand_ratios: Per stage, the expand ratio of each running block.
    """

    depths: Tuple[int, ...]
    kernel_sizes: Tuple[Tuple[int, ...], ...]
    expand_ratios: Tuple[Tuple[int, ...], ...]

    def blocks(self):
        """``(stage, block, kernel_size, expand_ratio)`` of every running block, in order."""
        for stage, depth in enumerate(self.depths):
            for block in range(depth):
                yield (stage, block, self.kernel_sizes[stage][block],
                       self.expand_ratios[stage][block])

    def to_dict(self):
        return {"depths": list(self.depths),
                "kernel_sizes": [list(k) for k in self.kernel_sizes],
                "expand_ratios": [list(e) for e in self.expand_ratios]}

    @classmethod
    def from_dict(cls, values):
        return cls(tuple(values["depths"]), tuple(tuple(k) for k in values["kernel_sizes"]),
                   tuple(tuple(e) for e in values["expand_ratios"]))


def _sorted_unique(name: str, values: Sequence[int]) -> Tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                         for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got "
                         f"{values!r}")
    return tuple(sorted(set(values)))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The allowed kernel sizes, expand ratios and depths, and the number of stages.

    Raises:
      ValueError: For empty or non-positive choices, or even kernel sizes (they have no
        centre to slice smaller kernels around).
    """

    kernel_sizes: Tuple[int, ...] = (3, 5, 7)
    expand_ratios: Tuple[int, ...] = (3, 4, 6)
    depths: Tuple[int, ...] = (2, 3, 4)
    stages: int = 5

    def __post_init__(self):
        for name in ("kernel_sizes", "expand_ratios", "depths"):
            object.__setattr__(self, name, _sorted_unique(name, getattr(self, name)))
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be a positive integer, got {self.stages!r}")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    def size(self) -> int:
        """How many distinct sub-networks the space holds."""
        per_block = len(self.kernel_sizes) * len(self.expand_ratios)
        per_stage = sum(per_block**depth for depth in self.depths)
        return per_stage**self.stages

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """Returns `config` if it lies in the space.

        Raises:
          ValueError: Naming the first value outside the space and the allowed values.
        """
        if not isinstance(config, SubnetConfig):
            raise ValueError(f"config must be a SubnetConfig, got {type(config).__name__}")
        for name in ("depths", "kernel_sizes", "expand_ratios"):
            if len(getattr(config, name)) != self.stages:
                raise ValueError(f"config.{name} must have one entry per stage ({self.stages}), "
                                 f"got {len(getattr(config, name))}")
        for stage, depth in enumerate(config.depths):
            if depth not in self.depths:
                raise ValueError(f"config.depths[{stage}]={depth!r} is outside the search "
                                 f"space; allowed: {self.depths}")
            for name, allowed in (("kernel_sizes", self.kernel_sizes),
                                  ("expand_ratios", self.expand_ratios)):
                values = getattr(config, name)[stage]
                if len(values) != depth:
                    raise ValueError(f"config.{name}[{stage}] must have {depth} entries (the "
                                     f"stage's depth), got {len(values)}")
                for block, value in enumerate(values):
                    if value not in allowed:
                        raise ValueError(f"config.{name}[{stage}][{block}]={value!r} is outside "
                                         f"the search space; allowed: {allowed}")
        return config

    def _uniform(self, depth: int, kernel: int, expand: int) -> SubnetConfig:
        return SubnetConfig((depth,) * self.stages, ((kernel,) * depth,) * self.stages,
                            ((expand,) * depth,) * self.stages)

    def largest(self) -> SubnetConfig:
        """Deepest stages, largest kernels and expand ratios."""
        return self._uniform(self.depths[-1], self.kernel_sizes[-1], self.expand_ratios[-1])

    def smallest(self) -> SubnetConfig:
        """Shallowest stages, smallest kernels and expand ratios."""
        return self._uniform(self.depths[0], self.kernel_sizes[0], self.expand_ratios[0])

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A config drawn uniformly per choice (depth, then each block's kernel and ratio)."""
        depths = tuple(int(rng.choice(self.depths)) for _ in range(self.stages))
        return SubnetConfig(
            depths,
            tuple(tuple(int(rng.choice(self.kernel_sizes)) for _ in range(d)) for d in depths),
            tuple(tuple(int(rng.choice(self.expand_ratios)) for _ in range(d)) for d in depths))

    def mutate(self, config: SubnetConfig, rng: np.random.Generator,
               probability: float = 0.1) -> SubnetConfig:
        """Redraws each choice of `config` with `probability` (a new depth keeps the existing
        blocks' choices and draws those it adds)."""
        self.validate(config)
        depths, kernels, ratios = [], [], []
        for stage, depth in enumerate(config.depths):
            new_depth = int(rng.choice(self.depths)) if rng.random() < probability else depth
            stage_kernels, stage_ratios = [], []
            for block in range(new_depth):
                kernel = (config.kernel_sizes[stage][block] if block < depth
                          else int(rng.choice(self.kernel_sizes)))
                ratio = (config.expand_ratios[stage][block] if block < depth
                         else int(rng.choice(self.expand_ratios)))
                if rng.random() < probability:
                    kernel = int(rng.choice(self.kernel_sizes))
                if rng.random() < probability:
                    ratio = int(rng.choice(self.expand_ratios))
                stage_kernels.append(kernel)
                stage_ratios.append(ratio)
            depths.append(new_depth)
            kernels.append(tuple(stage_kernels))
            ratios.append(tuple(stage_ratios))
        return SubnetConfig(tuple(depths), tuple(kernels), tuple(ratios))

    def crossover(self, first: SubnetConfig, second: SubnetConfig,
                  rng: np.random.Generator) -> SubnetConfig:
        """Each stage taken whole from one parent or the other, with equal chance."""
        self.validate(first)
        self.validate(second)
        pick = [rng.random() < 0.5 for _ in range(self.stages)]
        return SubnetConfig(
            *(tuple((a if take_first else b)[stage] for stage, take_first in enumerate(pick))
              for a, b in ((first.depths, second.depths),
                           (first.kernel_sizes, second.kernel_sizes),
                           (first.expand_ratios, second.expand_ratios))))
