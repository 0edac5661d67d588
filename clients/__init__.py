"""Flower ClientApp: hardware profile -> branch, local training with familial/ (federation issue)."""
