"""Thin cogs: Discord events in, engine calls out."""
