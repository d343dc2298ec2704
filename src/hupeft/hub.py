"""Whether the Hugging Face hub can be reached from here, decided once by one short request.

Offline, the hub clients retry every request for tens of seconds before they give up (datasets:
five retries per file, for every split), and where packets are dropped rather than refused some
wait minutes (bitsandbytes asks the hub for kernels when it is imported). So one HEAD request to
the hub's endpoint (`HF_ENDPOINT`, default https://huggingface.co; proxies from the environment,
as the clients use them) decides, within PROBE_SECONDS, for the whole process: where the hub does
not answer, every hub client (huggingface_hub, datasets, transformers and what builds on them, in
this process and the processes it starts) is switched to its offline mode, in which it reads its
local cache at once. HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 or TRANSFORMERS_OFFLINE=1 decide it
without any request.
"""

from __future__ import annotations

import os
import sys
import threading

PROBE_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# Every setting that changes the answer: a change makes the next question probe again.
_SETTINGS = OFFLINE_ENV + ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                           "NO_PROXY", "no_proxy")
_answers: dict[tuple, str | None] = {}
_lock = threading.Lock()


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_switch() -> str | None:
    """The offline variable that is set (truthy), or None."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def unreachable() -> str | None:
    """Why the hub cannot be reached (one short phrase), or None when it answered. Asked once per
    process and settings; the first answer that it cannot be reached switches the clients offline."""
    if _offline_since is not None:
        return _offline_since
    switch = offline_switch()
    if switch:
        return f"{switch} is set"
    key = tuple(os.environ.get(v) for v in _SETTINGS)
    with _lock:
        if key not in _answers:
            _answers[key] = probe(endpoint())
        reason = _answers[key]
    if reason:
        go_offline(reason)
    return reason


def decide(name: str | os.PathLike | None = None) -> str | None:
    """Call before a lookup through a hub client: `unreachable()`, which switches the clients
    offline where the hub does not answer. A `name` that is a local file or folder needs no hub,
    and no request is made for it."""
    if name is not None and os.path.exists(name):
        return None
    return unreachable()


def probed_unreachable() -> str | None:
    """The probe's reason when this process went offline on it (not on an offline variable)."""
    return _offline_since


def go_offline(reason: str) -> None:
    """Every hub client offline for the rest of this process and the processes it starts: the
    variable for clients imported later (and children), the switch that imported ones read."""
    global _offline_since
    _offline_since = reason
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        mod = sys.modules.get(module)  # not imported yet: it reads the variable when it is
        for name in names:
            if mod is not None and hasattr(mod, name):
                setattr(mod, name, True)


_offline_since: str | None = None


def probe(url: str, seconds: float = PROBE_SECONDS) -> str | None:
    """None if `url` answers a HEAD request within `seconds`, else why not. Any HTTP answer below
    500 counts: the hub clients fail at once on those; what they retry is no answer or a 5xx.
    The request runs in a thread so that a name lookup that hangs (which the socket timeout does
    not bound) cannot hold the caller longer."""
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(_head(url, seconds)), daemon=True)
    worker.start()
    worker.join(seconds + 0.5)
    return result[0] if result else f"no answer from {url} in {seconds:.0f} s"


def _head(url: str, seconds: float) -> str | None:
    import socket
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds).close()
        return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"{url} answered HTTP {e.code}"
    except (socket.timeout, TimeoutError):
        return f"no answer from {url} in {seconds:.0f} s"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{url} unreachable ({str(reason).splitlines()[0][:80] if str(reason) else type(e).__name__})"
