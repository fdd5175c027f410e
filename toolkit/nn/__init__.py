"""Small reference networks for tests and toy problems."""

from toolkit.nn.mlp import TimeMLP, sinusoidal_embedding

__all__ = ["TimeMLP", "sinusoidal_embedding"]
