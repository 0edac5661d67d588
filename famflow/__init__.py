"""famflow: federated learning on familial models (early-exit branches of one transformer).

One import root over the product's folders; layers point one way (docs/architecture.md):
``famflow.familial`` (the model) -> ``famflow.strategies`` and ``famflow.collab`` ->
``famflow.federation`` (the run config and the exchange contract) -> ``famflow.clients`` ->
``famflow.server`` -> ``famflow.simulations``; the command line (``famflow.__main__``) sits on top.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("famflow")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
