"""charbot: character chatbots from scripts."""

__version__ = "0.1.0"
