"""Flower ClientApp: hardware profile -> branch, local training (the federation issue)."""
