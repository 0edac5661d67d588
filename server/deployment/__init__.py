"""famflow on real edge boxes: TLS certificates, SuperNode keys, the flwr run connection."""
