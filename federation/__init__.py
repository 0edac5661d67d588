"""What clients and server share: the run config and the exchange contract (no Flower
strategy, no ClientApp here)."""
