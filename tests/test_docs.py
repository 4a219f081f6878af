"""The README documents every setting and command (it is the manual)."""

from __future__ import annotations

from pathlib import Path

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
