"""The README documents every setting and command (it is the manual)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kaie_analytics.cli import app, keys_app
from kaie_analytics.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"KAIE_{name.upper()}" in README, name


def test_every_command_is_documented() -> None:
    for cmd in app.registered_commands:
        assert f"kaie-analytics {cmd.name or cmd.callback.__name__}" in README  # type: ignore[union-attr]
    for cmd in keys_app.registered_commands:
        assert f"keys {cmd.name}" in README


def test_every_error_code_is_documented() -> None:
    from kaie_analytics import errors

    for obj in vars(errors).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, errors.ApiError)
            and obj is not errors.ApiError
        ):
            assert obj.code in README, obj.code


def _examples() -> list[tuple[str, str, Any]]:
    """The README's curl examples: (method, path, JSON body or None)."""
    block = README.split("## Examples", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = re.split(r"\n(?=curl )", block.replace("\\\n", " "))
    out = []
    for command in commands:
        if not command.startswith("curl"):
            continue
        url = re.search(r"localhost:8000(/[^'\s]*)", command)
        assert url is not None, command
        body = re.search(r"-d '(.*?)'", command, re.S)
        method = "POST" if "-X POST" in command else "GET"
        out.append((method, url.group(1), json.loads(body.group(1)) if body else None))
    return out


def test_readme_examples_run_as_written(settings: Settings) -> None:
    """On the demo's data and the README's own event, every example answers 2xx."""
    from fastapi.testclient import TestClient

    from conftest import make_key
    from kaie_analytics.app import create_app
    from kaie_analytics.demo import generate_demo

    examples = _examples()
    assert len(examples) >= 9
    with TestClient(create_app(settings)) as client:
        key = make_key(settings, "demo")
        headers = {"Authorization": f"Bearer {key}"}
        for _, events in generate_demo(days=3):
            for i in range(0, len(events), 1000):
                r = client.post("/v1/events", json={"events": events[i : i + 1000]},
                                headers=headers)  # fmt: skip
                assert r.status_code == 200 and r.json()["data"]["rejected"] == 0
        for method, path, body in examples:
            if "report-..." in path:
                continue  # stands for the id the POST before it answers
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code in (200, 202), (path, r.text)


def test_api_docs_load_nothing_from_the_network(client: Any) -> None:
    """/docs and /redoc load their scripts and styles from the app itself."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
        for asset in assets:
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 1000, asset
        assert "https://" not in r.text  # no CDN URL
    assert client.get("/openapi.json").status_code == 200
