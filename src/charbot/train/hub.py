"""Upload a finished output directory to the Hugging Face Hub (after the local save, never instead of it)."""

from __future__ import annotations

import os
from pathlib import Path

from charbot.errors import ConfigError, ModelError

TOKEN_ENV = "HF_TOKEN"


def push(directory: Path, repo: str, token_env: str = TOKEN_ENV, endpoint: str | None = None) -> str:
    token = os.environ.get(token_env)
    if not token:
        raise ConfigError(f"--push-to-hub {repo}: {token_env} is not set (the model is saved locally in {directory})", f"export {token_env}=<a write token from huggingface.co/settings/tokens> and re-run with --resume, or upload {directory} later")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, endpoint=endpoint)
    try:
        api.create_repo(repo, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(directory), repo_id=repo, repo_type="model", ignore_patterns=["checkpoints/*", ".saving/*"])
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise ModelError(f"upload to {repo} failed (HTTP {status}; the model is saved locally in {directory})", "check the repo name and that the token may write to it") from None
    except Exception as exc:  # no network: httpx/requests transport errors share no useful base class
        raise ModelError(f"upload to {repo} failed: hub unreachable ({type(exc).__name__}); the model is saved locally in {directory}", "retry when online") from None
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo}"))
