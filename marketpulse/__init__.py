"""marketpulse: fine-tune, export and score market text."""

__version__ = "0.1.0"
