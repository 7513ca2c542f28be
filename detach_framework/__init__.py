"""detach-framework: align exocentric video with ambient sensors through registered plugins."""

__version__ = "0.1.0"
