"""The Discord transport: a discord.py bot whose cogs call the engine."""
