"""`--kaggle OWNER/DATASET[/FILE]`: fetch a script through kagglehub, or say exactly which credentials are missing."""

from __future__ import annotations

import os
import re
from pathlib import Path

from charbot.prepare.errors import ScriptError

_HANDLE = re.compile(r"^(?P<owner>[A-Za-z0-9][\w.-]*)/(?P<dataset>[A-Za-z0-9][\w.-]*)(?:/(?P<file>.+))?$")
SCRIPT_SUFFIXES = (".csv", ".tsv", ".txt")


def parse_handle(handle: str) -> tuple[str, str | None]:
    m = _HANDLE.match(handle.strip())
    if not m:
        raise ScriptError("--kaggle", f"{handle!r} is not OWNER/DATASET or OWNER/DATASET/FILE", "e.g. --kaggle andradaolteanu/rickmorty-scripts")
    return f"{m['owner']}/{m['dataset']}", m["file"]


def credentials_hint() -> str | None:
    """None when kagglehub will find credentials; otherwise what to set."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return None
    if os.environ.get("KAGGLE_API_TOKEN"):
        return None
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    if (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file():
        return None
    return f"set KAGGLE_USERNAME and KAGGLE_KEY, or save your API token as {config_dir / 'kaggle.json'} (kaggle.com > Settings > API)"


def download(handle: str) -> Path:
    """The local path of the script file (kagglehub caches downloads, so a second run is offline-safe)."""
    dataset, file = parse_handle(handle)
    hint = credentials_hint()
    if hint:
        raise ScriptError(f"--kaggle {handle}", "no Kaggle credentials found", hint)
    try:
        import kagglehub
    except ImportError:
        raise ScriptError(f"--kaggle {handle}", "kagglehub is not installed", "pip install 'charbot[kaggle]'") from None
    try:
        local = Path(kagglehub.dataset_download(dataset, path=file) if file else kagglehub.dataset_download(dataset))
    except Exception as exc:  # network, auth, 404: kagglehub raises many types; all end the same way for the user
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ScriptError(f"--kaggle {handle}", f"download failed ({reason})", "check the network, the dataset name and your Kaggle credentials") from None
    if local.is_file():
        return local
    found = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix.lower() in SCRIPT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    shown = ", ".join(str(p.relative_to(local)) for p in found[:8]) or "no .csv/.tsv/.txt files"
    raise ScriptError(f"--kaggle {handle}", f"the dataset has {len(found)} script-like files ({shown})", f"name one: --kaggle {dataset}/FILE")
