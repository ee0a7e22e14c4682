"""`charbot prepare`: script exports (CSV/TSV/R write.table) -> chat-format training data and a persona card.

Streaming throughout: a script of any size is read once, row by row. Imports no torch.
"""

from charbot.prepare.errors import ScriptError
from charbot.prepare.pipeline import PrepareResult, prepare, slugify
from charbot.prepare.report import PrepareReport

__all__ = ["PrepareReport", "PrepareResult", "ScriptError", "prepare", "slugify"]
