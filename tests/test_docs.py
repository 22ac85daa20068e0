"""The documentation keeps up with the code: the configuration reference is the one the schema
generates, and the README stays a short front door."""

from __future__ import annotations

from pathlib import Path

from afd_cli.reference import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_generated_from_the_current_schema() -> None:
    page = ROOT / "docs" / "reference" / "configuration.md"
    assert page.read_text() == markdown(), "regenerate it: make docs (afd config reference)"


def test_reference_names_every_key_of_every_plug_in() -> None:
    from afd_cli import registry

    page = markdown()
    for group in registry.GROUPS:
        for name, plugin in registry.plugins(group).items():
            assert f"### `{group}={name}`" in page
            for key in plugin.reads:
                assert f"`{group}.{key}`" in page


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text
