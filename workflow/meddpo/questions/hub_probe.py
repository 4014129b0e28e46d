"""Asking the Hugging Face Hub once, with a short timeout and no retries: is a repo there, and can
the hub be reached at all; and whether an offline variable keeps a library off the network.

The questions step asks before it hands a hub dataset to the datasets library (which retries
for half a minute, with a warning each time, when there is no network); the preflight asks
for every model and dataset it cannot find in the cache (meddpo.preflight.hub).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

# The variables that keep each library off the network, in the order they are named
MODEL_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DATASET_OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
HUB_TIMEOUT_S = 5


def offline(variables: tuple[str, ...] = MODEL_OFFLINE_VARIABLES) -> str | None:
    """The first of ``variables`` that is set to a true value (the library will not go online), or None."""
    for name in variables:
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return name
    return None


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub_token() -> str | None:
    """HF_TOKEN, else the token ``hf auth login`` stored (read here: huggingface_hub is not imported,
    so that a step can still put it in offline mode after asking)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    try:
        return (
            Path(os.environ.get("HF_TOKEN_PATH") or home / "token").read_text(encoding="utf-8").strip()
            or None
        )
    except (OSError, UnicodeDecodeError):  # no token: ask without one
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect to the file store is an answer
        return None


def hub_status(
    repo_id: str, kind: str = "model", revision: str | None = None, timeout_s: float = HUB_TIMEOUT_S
) -> int | str:
    """The HTTP status the hub answers for a repo (a HEAD request), or why it could not be asked."""
    revision = revision or "main"
    if kind == "model":
        url = f"{hub_endpoint()}/{repo_id}/resolve/{revision}/config.json"
    else:
        url = f"{hub_endpoint()}/api/datasets/{repo_id}/revision/{revision}"
    request = urllib.request.Request(url, method="HEAD")
    token = _hub_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout_s) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        reason = err.reason
        return getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as err:  # a timeout, a malformed HF_ENDPOINT
        return getattr(err, "strerror", None) or str(err) or type(err).__name__
