"""Sync slash commands only when they change: Discord rate-limits command updates hard, and a bot that
re-registers on every start burns that budget. The hash of the payload `tree.sync()` would send is kept
in a small file next to the memory database."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from discord import app_commands

log = logging.getLogger(__name__)


def payload_hash(tree: app_commands.CommandTree, application_id: int | None) -> str:
    payload = [command.to_dict(tree) for command in tree.get_commands()]
    blob = json.dumps({"application_id": application_id, "commands": payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


async def sync_if_changed(tree: app_commands.CommandTree, application_id: int | None, path: Path) -> bool:
    """Sync when the stored hash differs; returns whether it synced."""
    digest = payload_hash(tree, application_id)
    try:
        if path.read_text(encoding="utf-8").strip() == digest:
            log.info("slash commands unchanged; not syncing")
            return False
    except OSError:
        pass
    synced = await tree.sync()
    log.info("synced %d slash commands", len(synced))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(digest + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return True
