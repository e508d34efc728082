"""kern: an agent framework whose streaming runs can be cancelled from anywhere."""

__version__ = "0.1.0"
