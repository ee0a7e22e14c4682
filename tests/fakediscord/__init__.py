"""A loopback fake of Discord's REST API and gateway, for driving the real discord.py client in tests."""

from .server import FakeDiscord
from .state import FakeState

__all__ = ["FakeDiscord", "FakeState"]
