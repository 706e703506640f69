"""OQAT (Shen et al., arXiv:2010.04354): a quantized once-for-all supernet, searched under a
budget. This first part holds the search space, the sub-network architecture with its exact
cost, and the evolutionary search; the shared-step supernet, its training, bit inheritance and
extraction follow (see the README).
"""

from tfadaqat.oqat.architecture import (BlockShape, SupernetSpec, block_shapes, build_subnet,
                                        subnet_cost)
from tfadaqat.oqat.search import Candidate, SearchResult, evolutionary_search
from tfadaqat.oqat.space import SearchSpace, SubnetConfig

__all__ = ["BlockShape", "Candidate", "SearchResult", "SearchSpace", "SubnetConfig",
           "SupernetSpec", "block_shapes", "build_subnet", "evolutionary_search",
           "subnet_cost"]
