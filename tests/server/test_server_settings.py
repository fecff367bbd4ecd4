"""Settings: CLI flags over ACTIVESTORAGE_* variables over defaults."""

import pytest

from activestorage.server.settings import LOOPBACK_HOSTS, Settings, parse_args


def test_defaults_are_loopback_only():
    s = parse_args([], environ={})
    assert s == Settings()
    assert s.allow_upstream == LOOPBACK_HOSTS and s.host == "127.0.0.1"


def test_environment_then_flags():
    env = {"ACTIVESTORAGE_PORT": "9100", "ACTIVESTORAGE_ALLOW_UPSTREAM": "s3.example.org, minio:9000",
           "ACTIVESTORAGE_MAX_BODY_BYTES": "2048", "ACTIVESTORAGE_ACCESS_LOG": "false",
           "ACTIVESTORAGE_UPSTREAM_READ_TIMEOUT": "2.5", "ACTIVESTORAGE_CLIENT_TIMEOUT": "3"}
    s = parse_args([], environ=env)
    assert (s.port, s.max_body_bytes, s.access_log, s.upstream_read_timeout) == (9100, 2048, False, 2.5)
    assert s.allow_upstream == ("s3.example.org", "minio:9000") and s.client_timeout == 3.0
    s = parse_args(["--port", "9200", "--allow-upstream", "a,b", "--allow-upstream", "c",
                    "--workers", "3", "--log-level", "debug"], environ=env)
    assert (s.port, s.workers, s.log_level) == (9200, 3, "debug")
    assert s.allow_upstream == ("a", "b", "c")


def test_tls_flags_go_together():
    with pytest.raises(SystemExit):
        parse_args(["--tls-cert", "c.pem"], environ={})
    s = parse_args(["--tls-cert", "c.pem", "--tls-key", "k.pem"], environ={})
    assert (s.tls_cert, s.tls_key) == ("c.pem", "k.pem")


def test_json_round_trip_for_worker_processes():
    s = parse_args(["--allow-upstream", "x,y", "--max-batch", "7"], environ={})
    assert Settings.from_json(s.to_json()) == s


def test_settings_object_reads_no_environment_implicitly(monkeypatch):
    """``Settings()`` is the documented defaults; the environment is read by from_env only."""
    monkeypatch.setenv("ACTIVESTORAGE_PORT", "9300")
    assert Settings().port == 8080
    assert Settings.from_env().port == 9300
    assert parse_args([]).port == 9300


def test_malformed_environment_variable_names_it():
    with pytest.raises(SystemExit, match="ACTIVESTORAGE_PORT"):
        parse_args([], environ={"ACTIVESTORAGE_PORT": "eighty"})
    with pytest.raises(SystemExit, match="ACTIVESTORAGE_ACCESS_LOG"):
        parse_args([], environ={"ACTIVESTORAGE_ACCESS_LOG": "sometimes"})


def test_boolean_variables_and_case_of_names():
    for word, expect in (("1", True), ("yes", True), ("on", True), ("0", False), ("off", False),
                         ("FALSE", False)):
        assert Settings.from_env({"ACTIVESTORAGE_ACCESS_LOG": word}).access_log is expect, word
    assert Settings.from_env({"activestorage_max_batch": "9"}).max_batch == 9


def test_settings_are_frozen_and_validated():
    s = Settings()
    with pytest.raises(Exception):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(Exception):
        Settings(port="eighty")  # type: ignore[arg-type]
    assert s.replace(max_batch=3).max_batch == 3 and s.max_batch == 1024


def test_s3_reach_settings(tmp_path):
    s = parse_args([], environ={})
    assert (s.s3_addressing_style, s.upstream_ca_bundle) == ("path", None)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"ACTIVESTORAGE_S3_ADDRESSING_STYLE": "virtual",
           "ACTIVESTORAGE_UPSTREAM_CA_BUNDLE": str(ca)}
    s = parse_args([], environ=env)
    assert (s.s3_addressing_style, s.upstream_ca_bundle) == ("virtual", str(ca))
    s = parse_args(["--s3-addressing-style", "path"], environ=env)
    assert s.s3_addressing_style == "path"
    with pytest.raises(SystemExit):
        parse_args(["--s3-addressing-style", "dns"], environ={})
    with pytest.raises(SystemExit, match="ADDRESSING_STYLE"):
        parse_args([], environ={"ACTIVESTORAGE_S3_ADDRESSING_STYLE": "dns"})
    with pytest.raises(SystemExit, match="no such file"):
        parse_args(["--upstream-ca-bundle", str(tmp_path / "absent.pem")], environ={})
