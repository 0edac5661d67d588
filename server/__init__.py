"""Flower ServerApp: round loop, checkpoints, TensorBoard, export (federation issue)."""
