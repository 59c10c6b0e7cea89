"""The management API client every ``tinymlaas`` command that talks to the daemon uses (stdlib only)."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from .common import DEFAULT_CONFIG, CliError


class DeviceFailed(CliError):
    """The device refused, did not answer or answered something undecodable; ``body`` keeps its CoAP ``code``."""

    def __init__(self, message: str, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.body = body


class ApiClient:
    """A small blocking client for the management API (stdlib only)."""

    def __init__(self, base_url: str, token: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/") + "/api/v1"
        self._token = token
        self._timeout = timeout

    def _open(self, method: str, path: str, body: Any = None, timeout: float | None = None,
              accept: tuple[int, ...] = ()):
        raw = isinstance(body, bytes)
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream" if raw else "application/json")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self._timeout)
        except urllib.error.HTTPError as error:
            if error.code in accept:  # an answer the caller reads, not a failure
                return error
            try:
                body = json.loads(error.read())
                message = body.get("error", error.reason)
            except (ValueError, AttributeError):
                body, message = None, error.reason
            if isinstance(body, dict) and body.get("ok") is False and "code" in body:
                raise DeviceFailed(f"{message} (HTTP {error.code})", body) from None
            raise CliError(f"{message} (HTTP {error.code})") from None
        except urllib.error.URLError as error:
            raise CliError(
                f"cannot reach the daemon at {self.base_url}: {error.reason} (is `tinymlaas serve` running?)"
            ) from None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None,
             accept: tuple[int, ...] = ()) -> tuple[int, Any]:
        """Status and JSON body; an error status raises :class:`CliError` with the API's message,
        except those in ``accept``, which are answered like a success."""
        with self._open(method, path, body, timeout, accept) as response:
            return response.status, json.loads(response.read() or b"null")

    def stream(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        with self._open("GET", path, timeout=timeout) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)


def _config_values(config_path: str | None) -> tuple[str, str]:
    """API base URL and token from the daemon's config file (or its defaults)."""
    from ..config import ConfigError, ServerConfig, load_config

    path = config_path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    try:
        config = load_config(path) if path else ServerConfig()
    except ConfigError as error:
        raise CliError(str(error)) from None
    host = config.api.host if config.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    token = config.api.token
    if token is None:
        try:
            token = config.api.token_file.read_text().strip()
        except OSError as error:
            raise CliError(
                f"cannot read the API token from {config.api.token_file}: {error.strerror} "
                "(start the daemon once, or pass --token)"
            ) from None
    return f"http://{host}:{config.api.port}", token


def client(args: argparse.Namespace) -> ApiClient:
    """The API client of a command's ``--api``/``--token`` options, or of the daemon's configuration."""
    url, token = None, args.token or os.environ.get("TINYMLAAS_TOKEN")
    if args.api is None or token is None:
        config_url, config_token = _config_values(args.config)
        url, token = args.api or config_url, token or config_token
    return ApiClient(url or args.api, token)
