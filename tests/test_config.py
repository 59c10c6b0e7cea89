"""The daemon's YAML configuration and log set-up, as an operator meets them."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest
import structlog
import yaml

from lwm2m_server.config import (
    ApiConfig,
    CoapConfig,
    ConfigError,
    ServerConfig,
    config_to_dict,
    ensure_api_token,
    load_config,
    parse_config,
)
from lwm2m_server.logging_setup import configure_logging

SHIPPED = Path(__file__).parent.parent / "config" / "server.yaml"
TOKEN = "k9Qx2vLr8TzP4wYs7bNe"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message.removeprefix(f"{tmp_path / 'server.yaml'}: ")


# --------------------------------------------------------------------------- defaults


def test_shipped_config_loads_and_equals_the_defaults() -> None:
    assert load_config(SHIPPED) == ServerConfig()


def test_shipped_config_spells_out_every_key() -> None:
    document = yaml.safe_load(SHIPPED.read_text())
    written = {section: set(keys) for section, keys in document.items()}
    expected = {
        section: set(keys) for section, keys in config_to_dict(ServerConfig()).items()
    }
    expected["api"].discard("token")  # shown commented out: token_file is the default
    assert written == expected
    assert "# token:" in SHIPPED.read_text()


@pytest.mark.parametrize("text", ["", "# all commented out\n", "coap:\napi:\n"])
def test_empty_file_or_empty_sections_give_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == ServerConfig()


def test_defaults_are_what_the_design_asks_for() -> None:
    config = ServerConfig()
    assert (config.coap.host, config.coap.port) == ("::", 5683)
    assert config.coap.max_in_flight == 200
    assert config.coap.max_in_flight_per_device == 1
    assert config.coap.receive_buffer_bytes == 4 * 1024 * 1024
    assert config.coap.block_size == 1024
    assert config.queue.awake_window_s == 93
    assert config.store.kind == "sqlite"
    assert config.store.path == Path("data/tinymlaas.sqlite3")
    assert (config.api.host, config.api.port) == ("127.0.0.1", 5780)
    assert config.api.token_file == Path("data/api-token")
    assert (config.logging.level, config.logging.format) == ("info", "auto")


def test_values_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "ddf"
    folder.mkdir()
    config = load_config(write(tmp_path, f"""
coap: {{host: 0.0.0.0, port: 0, block_size: 256, request_timeout_s: 2.5}}
registration: {{min_lifetime_s: 30, max_lifetime_s: 86400, grace_s: 1.5}}
queue: {{max_pending_per_device: 4, awake_window_s: 0.5}}
objects: {{ddf_folders: ["{folder}"]}}
api: {{host: "::", allow_remote: true, token: {TOKEN}}}
logging: {{level: DEBUG, format: json}}
"""))
    assert config.coap == CoapConfig(host="0.0.0.0", port=0, block_size=256, request_timeout_s=2.5)
    assert config.registration.max_lifetime_s == 86400
    assert config.queue.awake_window_s == 0.5
    assert config.objects.ddf_folders == (folder,)
    assert config.api.token == TOKEN
    assert config.logging.level == "debug"
    assert config.source == str(tmp_path / "server.yaml")


def test_rate_limit_is_on_by_default_read_and_can_be_turned_off(tmp_path: Path) -> None:
    assert (ServerConfig().coap.rate_limit_per_peer, ServerConfig().coap.rate_limit_burst) == (10, 50)
    config = load_config(write(tmp_path, "coap: {rate_limit_per_peer: 0.5, rate_limit_burst: 3}"))
    assert (config.coap.rate_limit_per_peer, config.coap.rate_limit_burst) == (0.5, 3)
    assert load_config(write(tmp_path, "coap: {rate_limit_per_peer: 0}")).coap.rate_limit_per_peer == 0


def test_config_is_immutable() -> None:
    with pytest.raises(AttributeError):
        ServerConfig().coap.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("coap: {port: abc}", "coap.port: must be an integer in 0..65535, got 'abc'"),
        ("coap: {port: 70000}", "coap.port: must be an integer in 0..65535, got 70000"),
        ("coap: {port: true}", "coap.port: must be an integer in 0..65535, got true"),
        ("api: {port: -1}", "api.port: must be an integer in 0..65535, got -1"),
        ("coap: {max_in_flight: -1}", "coap.max_in_flight: must be > 0, got -1"),
        ("coap: {max_in_flight: 1.5}", "coap.max_in_flight: must be an integer, got 1.5"),
        ("queue: {max_pending_per_device: 0}", "queue.max_pending_per_device: must be > 0, got 0"),
        ("coap: {receive_buffer_bytes: 0}", "coap.receive_buffer_bytes: must be > 0, got 0"),
        ("coap: {request_timeout_s: 0}", "coap.request_timeout_s: must be > 0, got 0"),
        ("registration: {grace_s: -1}", "registration.grace_s: must be >= 0, got -1"),
        ("queue: {default_expiry_s: soon}",
         "queue.default_expiry_s: must be a number (seconds), got 'soon'"),
        ("registration: {min_lifetime_s: 0}",
         "registration.min_lifetime_s: must be an integer in 1..4294967295, got 0"),
        ("registration: {min_lifetime_s: 60, max_lifetime_s: 30}",
         "registration.max_lifetime_s: must be >= registration.min_lifetime_s (60), got 30"),
        ("coap: {max_in_flight: 4, max_in_flight_per_device: 8}",
         "coap.max_in_flight_per_device: must be <= coap.max_in_flight (4), got 8"),
        ("coap: {host: [a]}", "coap.host: must be an IP address ('::' = all interfaces, "
         "'0.0.0.0' = all IPv4, '127.0.0.1' = this machine only) or a host name, got a list"),
        ("coap: {block_size: 1000}",
         "coap.block_size: must be one of 16, 32, 64, 128, 256, 512 or 1024, got 1000"),
        ("store: {kind: redis}", "store.kind: must be one of 'sqlite' or 'postgresql', got 'redis'"),
        ("logging: {level: verbose}",
         "logging.level: must be one of 'debug', 'info', 'warning' or 'error', got 'verbose'"),
        ("logging: {format: xml}",
         "logging.format: must be one of 'auto', 'console' or 'json', got 'xml'"),
        ("api: {allow_remote: maybe}",
         "api.allow_remote: must be a boolean (true or false), got 'maybe'"),
        ("store: {path: ''}", "store.path: must be a path (a non-empty string), got ''"),
        ("objects: {ddf_folders: /x}",
         "objects.ddf_folders: must be a list of folder paths, got '/x'"),
        ("coap: {port: }", "coap.port: has no value; remove the key to use the default (5683)"),
        ("coap: {rate_limit_per_peer: -1}", "coap.rate_limit_per_peer: must be >= 0, got -1"),
        ("coap: {rate_limit_per_peer: fast}",
         "coap.rate_limit_per_peer: must be a number (requests per second), got 'fast'"),
        ("coap: {rate_limit_burst: 0}", "coap.rate_limit_burst: must be > 0, got 0"),
        ("coap: {rate_limit_burst: 2.5}", "coap.rate_limit_burst: must be an integer, got 2.5"),
        ("coap: 5", "coap: must be a mapping of keys, got 5"),
        ("coap: {max_block1_bodies_per_peer: 0}", "coap.max_block1_bodies_per_peer: must be > 0, got 0"),
        ("coap: {block1_idle_timeout_s: 0}", "coap.block1_idle_timeout_s: must be > 0, got 0"),
        ("coap: {max_block1_bytes_per_peer: 100000}",
         "coap.max_block1_bytes_per_peer: must be >= coap.max_request_body_bytes (262144), got 100000: "
         "else a body of the largest size never finishes"),
        ("coap: {max_block1_bodies: 2}", "coap.max_block1_bodies: must be >= coap.max_block1_bodies_per_peer (4), got 2"),
        ("coap: {max_block1_bytes_per_peer: 33554432}",
         "coap.max_block1_bytes: must be >= coap.max_block1_bytes_per_peer (33554432), got 16777216"),
        ("coap: {secure_port: 70000}", "coap.secure_port: must be an integer in 0..65535, got 70000"),
        ("coap: {port: 5683, secure_port: 5683}", "coap.secure_port: must differ from coap.port (5683)"),
        ("security: {mode: paranoid}", "security.mode: must be one of 'mixed' or 'secure-only', got 'paranoid'"),
        ("security: {max_sessions: 0}", "security.max_sessions: must be > 0, got 0"),
        ("coap: {secure_port: null}\nsecurity: {mode: secure-only}",
         "security.mode: secure-only needs CoAPS: set coap.secure_port"),
        ("bootstrap: {server_uri: 'http://x'}",
         'bootstrap.server_uri: must be "" or a coap:// or coaps:// URI, got \'http://x\''),
        ("bootstrap: {short_server_id: 65535}", "bootstrap.short_server_id: must be an integer in 1..65534, got 65535"),
        ("bootstrap: {binding: X}", "bootstrap.binding: must be an LwM2M binding such as U, UQ or N, got 'X'"),
        ("bootstrap: {binding: QU}", "bootstrap.binding: must be an LwM2M binding such as U, UQ or N, got 'QU'"),
        ("bootstrap: {binding: UQQ}", "bootstrap.binding: must be an LwM2M binding such as U, UQ or N, got 'UQQ'"),
        ("bootstrap: {port: 70000}", "bootstrap.port: must be an integer in 0..65535, got 70000"),
        ("bootstrap: {secure_port: coaps}", "bootstrap.secure_port: must be an integer in 0..65535, got 'coaps'"),
        ("bootstrap: {secure_port: }", "bootstrap.secure_port: has no value; remove the key to use the default (0)"),
        ("coap: {port: 5683}\nbootstrap: {port: 5683}",
         "bootstrap.port: must differ from coap.port (5683); 0 shares the server's port"),
        ("bootstrap: {secure_port: 5684}",  # coap.secure_port's default
         "bootstrap.secure_port: must differ from coap.secure_port (5684); 0 shares the server's port"),
        ("bootstrap: {port: 5684}", "bootstrap.port: must differ from coap.secure_port (5684); 0 shares the server's port"),
        ("bootstrap: {port: 5783, secure_port: 5783}",
         "bootstrap.secure_port: must differ from bootstrap.port (5783); 0 shares the server's port"),
        ("deployment: {public_port: 70000}", "deployment.public_port: must be an integer in 0..65535, got 70000"),
    ],
)
def test_invalid_value_names_key_path_and_problem(tmp_path: Path, text: str, message: str) -> None:
    assert load_error(tmp_path, text) == message


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path: Path) -> None:
    assert load_error(tmp_path, "coap:\n  prot: 5683\n") == (
        "coap.prot: unknown key (did you mean 'port'?); valid keys: host, port, max_in_flight, "
        "max_in_flight_per_device, receive_buffer_bytes, request_timeout_s, block_size, "
        "rate_limit_per_peer, rate_limit_burst, max_request_body_bytes, max_block1_bodies_per_peer, "
        "max_block1_bytes_per_peer, max_block1_bodies, max_block1_bytes, block1_idle_timeout_s, workers, secure_port"
    )
    assert load_error(tmp_path, "api: {tokn_file: x}").startswith(
        "api.tokn_file: unknown key (did you mean 'token_file'?); valid keys: host, port,"
    )


def test_unknown_section_lists_valid_sections(tmp_path: Path) -> None:
    assert load_error(tmp_path, "colap: {}\n") == (
        "colap: unknown section (did you mean 'coap'?); valid sections: "
        "coap, registration, queue, store, objects, api, security, bootstrap, cluster, logging, deployment"
    )
    assert load_error(tmp_path, "zzz: 1").startswith("zzz: unknown section; valid sections:")


def test_error_message_format_matches_the_design(tmp_path: Path) -> None:
    path = write(tmp_path, "coap:\n  port: abc\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: coap.port: must be an integer in 0..65535, got 'abc'"
    assert (caught.value.path, caught.value.source) == ("coap.port", str(path))


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: queue.awake_window_s: must be > 0, got -1$"):
        parse_config({"queue": {"awake_window_s": -1}})
    assert parse_config(None) == ServerConfig()


def test_missing_ddf_folder_names_its_index(tmp_path: Path) -> None:
    text = f"objects:\n  ddf_folders:\n    - {tmp_path}\n    - /no/such/folder\n"
    assert load_error(tmp_path, text) == "objects.ddf_folders[1]: not a directory: /no/such/folder"
    (tmp_path / "file.xml").write_text("<LWM2M/>")
    text = f"objects: {{ddf_folders: ['{tmp_path / 'file.xml'}']}}"
    assert load_error(tmp_path, text) == f"objects.ddf_folders[0]: not a directory: {tmp_path / 'file.xml'}"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "api.example.com"])
def test_non_loopback_api_host_needs_allow_remote(tmp_path: Path, host: str) -> None:
    message = load_error(tmp_path, f'api: {{host: "{host}"}}')
    assert message.startswith(f"api.host: '{host}' is not a loopback address;")
    assert "api.allow_remote: true" in message
    config = load_config(write(tmp_path, f'api: {{host: "{host}", allow_remote: true}}'))
    assert config.api.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "::ffff:127.0.0.1"])
def test_loopback_api_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, f'api: {{host: "{host}"}}')).api.host == host


def test_wrong_type_names_the_expected_type(tmp_path: Path) -> None:
    assert load_error(tmp_path, "coap: {max_in_flight: '10'}") == (
        "coap.max_in_flight: must be an integer, got '10'"
    )
    assert load_error(tmp_path, "store: {path: 5}") == "store.path: must be a path (a non-empty string), got 5"
    assert load_error(tmp_path, "store: [a]") == "store: must be a mapping of keys, got a list"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert load_error(tmp_path, "- coap\n- api\n") == (
        "top level must be a mapping of sections "
        "(coap, registration, queue, store, objects, api, security, bootstrap, cluster, logging, deployment), got a list"
    )
    assert load_error(tmp_path, "just text").endswith("got 'just text'")


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "coap:\n  port: 5683\n host: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:3:2: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1)"
    )
    path = write(tmp_path, "coap: {port: 5683\napi: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:2:4: ")
    assert "\n" not in str(caught.value)


def test_unquoted_ipv6_host_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "coap:\n  host: ::\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f'{path}:2:10: mapping values are not allowed here; quote IPv6 addresses, e.g. host: "::"'
    )


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "coap:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:3:3: duplicate key 'port' (first at line 2)"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory$"):
        load_config(tmp_path / "missing.yaml")


def test_inline_token_is_validated_without_echoing_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, "api: {token: hunter2}")
    assert message.startswith("api.token: must be at least 16 characters")
    assert "hunter2" not in message
    assert load_error(tmp_path, "api: {token: 123456789}") == "api.token: must be a string, got an integer"
    assert load_error(tmp_path, f"api: {{token: {TOKEN}, token_file: t}}") == (
        "api: set either token or token_file, not both"
    )


def test_config_to_dict_redacts_the_token(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"api: {{token: {TOKEN}}}"))
    shown = config_to_dict(config)
    assert shown["api"]["token"] == "***"
    assert TOKEN not in json.dumps(shown)
    assert TOKEN not in repr(config)
    assert shown["store"]["path"] == "data/tinymlaas.sqlite3"
    assert "source" not in shown
    # Without a token the rest round-trips through YAML to the same configuration.
    plain = config_to_dict(ServerConfig())
    assert parse_config(yaml.safe_load(yaml.safe_dump(plain))) == ServerConfig()


# --------------------------------------------------------------------------- API token


def test_ensure_api_token_creates_a_private_file_once(tmp_path: Path) -> None:
    token_file = tmp_path / "data" / "api-token"
    config = ServerConfig(api=ApiConfig(token_file=token_file))
    token = ensure_api_token(config)
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == token
    assert ensure_api_token(config) == token
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["api-token"]  # no temp file left


def test_a_created_token_never_starts_like_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["-" + "a" * 42, "b" * 43])  # token_urlsafe starts with "-" once in 64
    monkeypatch.setattr("lwm2m_server.config.secrets.token_urlsafe", lambda size: next(drawn))
    config = ServerConfig(api=ApiConfig(token_file=tmp_path / "api-token"))
    assert ensure_api_token(config) == "b" * 43  # one a shell passes to --token as its value


def test_loading_config_does_not_create_the_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    load_config(SHIPPED)
    assert not (tmp_path / "data").exists()


def test_ensure_api_token_prefers_inline_token_and_reads_existing_file(tmp_path: Path) -> None:
    assert ensure_api_token(ServerConfig(api=ApiConfig(token=TOKEN))) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    assert ensure_api_token(ServerConfig(api=ApiConfig(token_file=token_file))) == TOKEN


def test_ensure_api_token_refuses_an_empty_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    config = ServerConfig(api=ApiConfig(token_file=token_file), source="server.yaml")
    with pytest.raises(ConfigError) as caught:
        ensure_api_token(config)
    assert str(caught.value) == (
        f"server.yaml: api.token_file: {token_file} is empty; delete it to have a random token generated"
    )


# --------------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def emit(fmt: str, level: str = "info") -> str:
    stream = io.StringIO()
    configure_logging(level, fmt, stream)
    log = structlog.get_logger("test")
    log.info("registered", ep="dev-1", lt=300, token=TOKEN, credentials={"psk": "c0ffee", "id": "dev-1"})
    log.debug("noise")
    logging.getLogger("aiocoap.test").info("library chatter")
    logging.getLogger("aiocoap.test").warning("retransmission limit %s", 4)
    return stream.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_parse_with_event_level_timestamp() -> None:
    lines = [json.loads(line) for line in emit("json").splitlines()]
    assert [line["event"] for line in lines] == ["registered", "retransmission limit 4"]
    first, second = lines
    assert first["level"] == "info" and first["ep"] == "dev-1" and first["lt"] == 300
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert second["level"] == "warning" and second["logger"] == "aiocoap.test"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console", "auto"])
def test_secrets_are_redacted(fmt: str) -> None:
    output = emit(fmt)
    assert TOKEN not in output and "c0ffee" not in output
    assert "***" in output
    assert "dev-1" in output


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_readable_and_auto_picks_json_off_a_terminal() -> None:
    console = emit("console")
    assert "registered" in console and "ep=dev-1" in console and "\x1b[" not in console
    auto = emit("auto")
    json.loads(auto.splitlines()[0])


@pytest.mark.usefixtures("restore_logging")
def test_debug_level_shows_debug_events() -> None:
    assert "noise" in emit("json", level="debug")
    assert "noise" not in emit("json", level="info")


def test_configure_logging_refuses_unknown_level_or_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose", "json", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())


def test_shipped_config_works_from_a_fresh_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the repository root on a fresh machine: nothing to create by hand."""
    monkeypatch.chdir(tmp_path)
    config = load_config(SHIPPED)
    token = ensure_api_token(config)
    assert (tmp_path / "data" / "api-token").read_text().strip() == token
    assert os.access(tmp_path / "data", os.W_OK)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("restore_logging")
def test_auto_on_a_terminal_is_colored_console_still_redacted() -> None:
    stream = FakeTerminal()
    configure_logging("info", "auto", stream)
    structlog.get_logger().info("api started", port=5780, api_token=TOKEN)
    output = stream.getvalue()
    assert "\x1b[" in output and "api started" in output
    assert TOKEN not in output


@pytest.mark.usefixtures("restore_logging")
def test_reconfiguring_does_not_duplicate_library_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)
    logging.getLogger("aiocoap").error("once")
    assert second.getvalue().count("once") == 1
    assert first.getvalue() == ""


def test_declared_rollouts_are_validated():
    document = {"deployment": {"rollouts": [{
        "id": "kws-m4f", "model": {"file": "m.tflite", "name": "kws", "version": "1.0"},
        "selector": {"endpoints": ["m4f-*"]}, "strategy": {"max_in_flight": 4, "mode": "pull"},
    }]}}
    (rollout,) = parse_config(document).deployment.rollouts
    assert (rollout.id, rollout.model_name, rollout.strategy["mode"]) == ("kws-m4f", "kws", "pull")
    document["deployment"]["rollouts"][0]["strategy"] = {"canary_fraction": 2}
    with pytest.raises(ConfigError, match=r"deployment.rollouts\[0\].strategy: canary_fraction must be in 0..1"):
        parse_config(document)
    document["deployment"]["rollouts"][0]["strategy"] = {"speed": 1}
    with pytest.raises(ConfigError, match=r"deployment.rollouts\[0\].strategy: valid keys"):
        parse_config(document)
    with pytest.raises(ConfigError, match=r"deployment.rollouts\[0\].model: must be a mapping"):
        parse_config({"deployment": {"rollouts": [{"id": "x", "model": "m.tflite"}]}})


def test_bootstrap_ports_of_its_own_and_queue_mode_bindings_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "bootstrap: {port: 5783, secure_port: 5784, binding: UQS}\n"))
    assert (config.bootstrap.port, config.bootstrap.secure_port, config.bootstrap.binding) == (5783, 5784, "UQS")
    default = load_config(write(tmp_path, "bootstrap: {binding: UQ}\n")).bootstrap
    assert (default.port, default.secure_port, default.binding) == (0, 0, "UQ")  # 0: share the server's ports
    # coap.port 0 picks a free port: it cannot clash with a bootstrap port chosen by the operator
    assert load_config(write(tmp_path, "coap: {port: 0, secure_port: 0}\nbootstrap: {port: 5783}\n")).bootstrap.port \
        == 5783


def test_workers_need_a_bus(tmp_path: Path) -> None:
    assert load_error(tmp_path, "coap: {workers: 2}\n") == (
        "cluster.bus: coap.workers: 2 needs a bus to join them: set cluster.bus (e.g. nats://127.0.0.1:4222)"
    )
    assert "must be a NATS URL" in load_error(tmp_path, "cluster: {bus: 'redis://x'}\n")
    assert "NATS subject token" in load_error(tmp_path, "cluster: {name: 'a.b'}\n")
    assert "coap.workers" in load_error(tmp_path, "coap: {workers: 0}\n")
