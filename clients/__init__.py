"""Flower ClientApp: hardware profile -> branch, local training and evaluation, replies."""
