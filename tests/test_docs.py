"""The README documents every setting, so the table cannot fall behind the code."""

from pathlib import Path

from qkan_orch.backends.accounts import ProviderAccounts
from qkan_orch.service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    fields = [*Settings.model_fields, *ProviderAccounts.model_fields]
    missing = [f"QKAN_{name.upper()}" for name in fields if f"`QKAN_{name.upper()}`" not in README]
    assert not missing, f"README settings table lacks {missing}"


def test_the_readme_opens_with_the_two_setup_commands() -> None:
    head = README[: README.index("## ")]
    assert "python3.11 -m venv .venv" in head and "qkan-orch demo" in head and "pytest" in head
