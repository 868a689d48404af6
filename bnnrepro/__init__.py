"""bnnrepro: reproduce binary neural network papers in one cached, deterministic pipeline.

Data flows through the subpackages in this order:
data -> nn (quantizers, layers) -> models -> optim -> engine (train, checkpoint) -> infer / report.
"""

__version__ = "0.1.0"

# The budgets a config may define under `profiles:` and params.yaml `profile` chooses from. Here, not in
# config.py, so that stages which only need the names (prepare_data.py) do not import the config machinery.
PROFILES = ("quick", "paper")
