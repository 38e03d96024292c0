"""Settings: parsing, validation, secrets, and the round trip through the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings.partitions == 12 and settings.brokers == "127.0.0.1:9092"


def test_values_are_parsed_and_validated() -> None:
    settings = load_settings({"PAYSTREAM_PARTITIONS": "4", "PAYSTREAM_CURRENCIES": "eur, jpy"})
    assert settings.partitions == 4
    assert settings.currencies == ("EUR", "JPY")
    with pytest.raises(SettingsError, match="PAYSTREAM_PARTITIONS"):
        load_settings({"PAYSTREAM_PARTITIONS": "many"})
    with pytest.raises(SettingsError, match="not a paystream setting"):
        load_settings({"PAYSTREAM_PARTITION": "4"})
    with pytest.raises(SettingsError, match="3-letter"):
        load_settings({"PAYSTREAM_CURRENCIES": "EURO"})
    assert load_settings({"PAYSTREAM_LEDGER_WRITERS": "8"}).ledger_writers == 8
    for writers in ("0", "9"):
        with pytest.raises(SettingsError, match=f"PAYSTREAM_LEDGER_WRITERS={writers}: must be 1"):
            load_settings({"PAYSTREAM_LEDGER_WRITERS": writers})


def test_test_session_variables_are_not_settings() -> None:
    assert load_settings({"PAYSTREAM_TEST_BROKERS": "x:1"}) == Settings()


def test_secrets_are_masked_when_printed() -> None:
    settings = load_settings({"PAYSTREAM_DATABASE_URL": "postgresql://app:hunter2@db/ledger"})
    assert "hunter2" not in repr(settings)
    assert "app:***@db" in repr(settings)


def test_to_env_round_trips() -> None:
    settings = Settings(
        partitions=3, currencies=("EUR", "KWD"), state_dir=Path("/tmp/x"), topic_prefix="p."
    )
    assert load_settings(settings.to_env()) == settings
