"""bnnrepro: reproduce binary neural network papers in one cached, deterministic pipeline.

Data flows through the subpackages in this order:
data -> nn (quantizers, layers) -> models -> optim -> engine (train, checkpoint) -> infer / report.
"""

__version__ = "0.1.0"
