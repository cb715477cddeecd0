import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env


def test_env_bool_refuses_anything_but_a_boolean(monkeypatch):
    monkeypatch.setenv("SB_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SB_FLAG"):
        env.env_bool("SB_FLAG", False)
    monkeypatch.setenv("SB_FLAG", "TRUE")
    assert env.env_bool("SB_FLAG", False) is True


def test_env_networks_names_the_variable_and_the_bad_entry(monkeypatch):
    monkeypatch.setenv("SB_NETS", "10.0.0.0/8, 300.1.1.1")
    with pytest.raises(ImproperlyConfigured, match=r"SB_NETS.*300\.1\.1\.1"):
        env.env_networks("SB_NETS")


def test_env_int_enforces_minimum(monkeypatch):
    monkeypatch.setenv("SB_N", "3")
    with pytest.raises(ImproperlyConfigured, match="SB_N=3 must be at least 10"):
        env.env_int("SB_N", 20, minimum=10)
    monkeypatch.setenv("SB_N", "x")
    with pytest.raises(ImproperlyConfigured, match="SB_N"):
        env.env_int("SB_N", 20)


def test_missing_secret_is_generated_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("SB_SECRET", raising=False)
    monkeypatch.delenv("SB_SECRET_FILE", raising=False)
    calls = []

    def generate():
        calls.append(1)
        return f"value-{len(calls)}"

    first = env.secret_or_generated("SB_SECRET", tmp_path, production=False, generate=generate)
    second = env.secret_or_generated("SB_SECRET", tmp_path, production=False, generate=generate)
    assert first == second == "value-1"
    assert (tmp_path / "sb_secret").stat().st_mode & 0o777 == 0o600


def test_missing_secret_stops_production(tmp_path, monkeypatch):
    monkeypatch.delenv("SB_SECRET", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SB_SECRET is not set"):
        env.secret_or_generated("SB_SECRET", tmp_path, production=True, generate=lambda: "x")


def test_secret_file_variant(tmp_path, monkeypatch):
    path = tmp_path / "s"
    path.write_text("from-a-file\n")
    monkeypatch.delenv("SB_SECRET", raising=False)
    monkeypatch.setenv("SB_SECRET_FILE", str(path))
    assert env.env_secret("SB_SECRET") == "from-a-file"
