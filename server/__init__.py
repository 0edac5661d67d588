"""Flower ServerApp: round loop, checkpoints, TensorBoard, export of refreshed branches."""
