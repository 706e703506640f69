"""OQAT (Shen et al., arXiv:2010.04354): a quantized once-for-all supernet, searched under a
budget: the search space, the sub-network architecture with its exact cost, the weight- and
step-shared supernet with sandwich training, BatchNorm recalibration, bit inheritance and
extraction of standalone quantized sub-networks, and the evolutionary search.
"""

from tfadaqat.oqat.architecture import (BlockShape, SupernetSpec, block_shapes, build_subnet,
                                        subnet_cost)
from tfadaqat.oqat.search import Candidate, SearchResult, evolutionary_search
from tfadaqat.oqat.space import SearchSpace, SubnetConfig
from tfadaqat.oqat.supernet import (Supernet, extract, inherit, network_cost, quantize_subnet,
                                    recalibrate, shared_steps, step_values)

__all__ = ["BlockShape", "Candidate", "SearchResult", "SearchSpace", "SubnetConfig", "Supernet",
           "SupernetSpec", "block_shapes", "build_subnet", "evolutionary_search", "extract",
           "inherit", "network_cost", "quantize_subnet", "recalibrate", "shared_steps",
           "step_values", "subnet_cost"]
