"""Provisioning and running a whole simulated fleet over CoAPS: the factory's key
file (``tinymlaas-sim credentials``), loading it into the security store in one
transaction (``tinymlaas credentials import``), and ``tinymlaas-sim fleet
--credentials`` giving every device its own PSK, for bootstrap or for a direct
coaps:// server. A key never shows up in any output."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import re
import signal
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.cli.main import main as cli_main
from lwm2m_server.config import ServerConfig
from lwm2m_server.security.credentials import CredentialError, CredentialConflict, CredentialStore, PskCredential
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from simulators import cli as sim_cli
from simulators.fleet import Fleet, generate_keys, parse_key_file, psks_for
from simulators.profiles import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
FLEET_YAML = ROOT / "config" / "fleet.yaml"
KEY = bytes.fromhex("c0ffee00112233445566778899aabbcc")
OTHER_KEY = bytes.fromhex("0badc0de0badc0de0badc0de0badc0de")
HEADER = "endpoint,identity,key,scope\n"


# -- tinymlaas credentials import ------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A server.yaml naming a store in tmp_path; the CLI configures logging, which is put back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.yaml").write_text("security: {credentials_path: secrets/creds.sqlite3}\n")
    yield tmp_path
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["credentials", *args, "--config", "server.yaml"])
    out, err = capsys.readouterr()
    return code, out, err


def stored(workdir: Path) -> list[tuple[str, str, str, bytes]]:
    with CredentialStore(workdir / "secrets" / "creds.sqlite3") as store:
        return [(c.endpoint, c.scope, c.identity, c.key) for c in store.list()]


def key_file(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text(header + "".join(row + "\n" for row in rows))
    return path


def test_import_stores_every_row_and_counts_them(workdir: Path, capsys):
    key_file(workdir / "keys.csv",
             f"m4f-0001,m4f-0001-bs,{KEY.hex()},bootstrap",
             f"m4f-0002,m4f-0002,{OTHER_KEY.hex()},server",
             "",  # blank lines are skipped
             f"m4f-0003,m4f-0003,{KEY.hex().upper()}")  # scope left out: server
    code, out, err = cli(capsys, "import", "keys.csv")
    assert (code, out, err) == (0, "imported 3 credential(s) from keys.csv: 3 added, 0 replaced\n", "")
    assert stored(workdir) == [("m4f-0001", "bootstrap", "m4f-0001-bs", KEY),
                               ("m4f-0002", "server", "m4f-0002", OTHER_KEY),
                               ("m4f-0003", "server", "m4f-0003", KEY)]


@pytest.mark.parametrize("third, problem", [
    ("m4f-0003,m4f-0003,c0ffeeZZsecretZZ,server", "key: not hexadecimal (character 7)"),
    ("m4f-0003,m4f-0003," + "ab" * 17 + ",server", "key: 17 bytes, at most 16"),
    ("m4f-0003,m4f-0003,,server", "key: empty"),
    ("m4f-0003," + "i" * 33 + f",{KEY.hex()},server", "identity: 33 bytes in UTF-8, at most 32"),
    (f"m4f-0003,m4f-0003,{KEY.hex()},factory", "scope: must be one of server, bootstrap, got 'factory'"),
    (f"m4f-0003,m4f-0003,{KEY.hex()},server,extra", "5 fields, the header has 4"),
    (f"m4f-0003,m4f-0001-bs,{KEY.hex()},server", "identity 'm4f-0001-bs' is on line 2 too"),
    (f"m4f-0001,m4f-0001-again,{KEY.hex()},bootstrap", "a second bootstrap credential of endpoint 'm4f-0001' (line 2)"),
    (f",m4f-0003,{KEY.hex()},server", "endpoint: must not be empty"),
])
def test_a_bad_third_row_imports_nothing_and_names_its_line(workdir: Path, capsys, third, problem):
    assert cli(capsys, "add", "gw-0001", "--key", OTHER_KEY.hex())[0] == 0
    before = stored(workdir)
    key_file(workdir / "keys.csv", f"m4f-0001,m4f-0001-bs,{KEY.hex()},bootstrap",
             f"m4f-0002,m4f-0002,{KEY.hex()},server", third)
    code, out, err = cli(capsys, "import", "keys.csv")
    assert code == 2 and out == ""
    assert err.startswith(f"tinymlaas: keys.csv line 4: {problem}") and err.endswith("; nothing imported\n")
    assert err.count("\n") == 1
    assert KEY.hex() not in err and "secret" not in err and "abab" not in err
    assert stored(workdir) == before


@pytest.mark.parametrize("text, problem", [
    ("", "line 1: empty; expected the header endpoint,identity,key,scope"),
    (f"m4f-0001,m4f-0001,{KEY.hex()}\n", "line 1: the first line must be the header"),  # no header
    (HEADER, "line 1: no credentials after the header"),
    ("endpoint,identity,scope\n", "line 1: the first line must be the header"),
    ('endpoint,identity,key,scope\n"m4f-0001,m4f-0001\n', "not CSV"),
])
def test_a_file_that_is_no_key_file_is_exit_2_without_echoing_it(workdir: Path, capsys, text, problem):
    (workdir / "keys.csv").write_text(text)
    code, out, err = cli(capsys, "import", "keys.csv")
    assert code == 2 and out == "" and problem in err and err.count("\n") == 1
    assert KEY.hex() not in err
    assert not (workdir / "secrets").exists()  # the store was never even opened


def test_a_file_that_is_not_utf8_names_the_line(workdir: Path, capsys):
    (workdir / "keys.csv").write_bytes(HEADER.encode() + b"m4f-0001,m\xff,00\n")
    code, _, err = cli(capsys, "import", "keys.csv")
    assert code == 2 and err == "tinymlaas: keys.csv line 2: not UTF-8 text; nothing imported\n"


def test_a_missing_file_is_exit_1(workdir: Path, capsys):
    code, out, err = cli(capsys, "import", "nope.csv")
    assert (code, out) == (1, "") and err == "tinymlaas: cannot read nope.csv: No such file or directory\n"


def test_a_conflict_imports_nothing_and_names_the_endpoint(workdir: Path, capsys):
    assert cli(capsys, "add", "m4f-0002", "--key", OTHER_KEY.hex())[0] == 0
    before = stored(workdir)
    rows = [f"m4f-0001,m4f-0001,{KEY.hex()},server", f"m4f-0002,m4f-0002,{KEY.hex()},server",
            f"m4f-0003,m4f-0003,{KEY.hex()},server"]
    key_file(workdir / "keys.csv", *rows)
    code, out, err = cli(capsys, "import", "keys.csv")
    assert code == 1 and out == ""
    assert err == ("tinymlaas: keys.csv line 3: endpoint 'm4f-0002' already has a server credential "
                   "(--replace to overwrite); nothing imported\n")
    assert stored(workdir) == before  # m4f-0001 (stored before the conflict) was rolled back

    code, out, _ = cli(capsys, "import", "keys.csv", "--replace")
    assert (code, out) == (0, "imported 3 credential(s) from keys.csv: 2 added, 1 replaced\n")
    assert [(ep, key) for ep, _, _, key in stored(workdir)] == [
        ("m4f-0001", KEY), ("m4f-0002", KEY), ("m4f-0003", KEY)]


def test_an_identity_of_another_endpoint_is_a_conflict_even_with_replace(workdir: Path, capsys):
    assert cli(capsys, "add", "gw-0001", "--identity", "m4f-0002", "--key", OTHER_KEY.hex())[0] == 0
    before = stored(workdir)
    key_file(workdir / "keys.csv", f"m4f-0001,m4f-0001,{KEY.hex()},server",
             f"m4f-0002,m4f-0002,{KEY.hex()},server")
    code, _, err = cli(capsys, "import", "keys.csv", "--replace")
    assert code == 1 and err == ("tinymlaas: keys.csv line 3: identity 'm4f-0002' is already the server "
                                 "credential of endpoint 'gw-0001'; each identity names one credential; "
                                 "nothing imported\n")
    assert stored(workdir) == before


def test_import_from_stdin(workdir: Path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(HEADER + f"m4f-0001,m4f-0001-bs,{KEY.hex()},bootstrap\n"))
    code, out, _ = cli(capsys, "import", "-")
    assert (code, out) == (0, "imported 1 credential(s) from stdin: 1 added, 0 replaced\n")
    assert stored(workdir) == [("m4f-0001", "bootstrap", "m4f-0001-bs", KEY)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(HEADER + "m4f-0002,m4f-0002,nothex\n"))
    code, _, err = cli(capsys, "import", "-")
    assert code == 2 and err == "tinymlaas: stdin line 2: key: not hexadecimal (character 1); nothing imported\n"


def test_keys_are_never_printed_by_import_or_list(workdir: Path, capsys):
    keys = generate_keys(["m4f-0001", "m4f-0002", "gw-0001"], "bootstrap")
    (workdir / "keys.csv").write_text("".join(
        [HEADER] + [f"{k.endpoint},{k.identity},{k.key.hex()},{k.scope}\n" for k in keys]))
    with structlog.testing.capture_logs() as logs:
        outputs = [cli(capsys, "import", "keys.csv"), cli(capsys, "import", "keys.csv"),
                   cli(capsys, "import", "keys.csv", "--replace"), cli(capsys, "list"), cli(capsys, "list", "--json")]
    assert [code for code, _, _ in outputs] == [0, 1, 0, 0, 0]
    text = repr(outputs) + repr(logs)
    for key in keys:
        assert key.identity in outputs[3][1]  # listed
        assert key.key.hex() not in text.lower() and repr(key.key) not in text


def test_add_many_is_one_transaction(tmp_path: Path):
    with CredentialStore(tmp_path / "credentials.sqlite3") as store:
        store.add(PskCredential("b", "b", OTHER_KEY), now=1.0)
        batch = [PskCredential("a", "a", KEY), PskCredential("b", "b", KEY), PskCredential("c", "c", KEY)]
        with pytest.raises(CredentialConflict) as caught:
            store.add_many(batch)
        assert caught.value.index == 1 and caught.value.field == "endpoint"
        assert [(c.endpoint, c.key) for c in store.list()] == [("b", OTHER_KEY)]  # "a" was rolled back
        assert store.add_many(batch, replace=True, now=2.0) == [False, True, False]
        assert [(c.endpoint, c.key, c.created) for c in store.list()] == [
            ("a", KEY, 2.0), ("b", KEY, 2.0), ("c", KEY, 2.0)]
        with pytest.raises(CredentialError, match=r"credentials\[1\]: identity 'x' is also credentials\[0\]'s"):
            store.add_many([PskCredential("d", "x", KEY), PskCredential("e", "x", KEY)])
        assert store.psk_for_endpoint("d") is None


# -- tinymlaas-sim credentials ---------------------------------------------------------------


def sim(*argv: str) -> int:
    return sim_cli.main(list(argv), configure_logging=False)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("scope, suffix", [("bootstrap", "-bs"), ("server", "")])
def test_sim_credentials_match_the_fleets_endpoints_and_are_private(tmp_path: Path, capsys, scope, suffix):
    out = tmp_path / "keys.csv"
    previous = os.umask(0)  # the file is 0600 whatever the umask
    try:
        assert sim("credentials", "--config", str(FLEET_YAML), "--count", "10", "--scope", scope,
                   "--out", str(out)) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert capsys.readouterr() == ("", f"wrote 10 {scope} PSK(s) to {out} (mode 0600)\n")
    rows = read_rows(out)
    fleet_endpoints = [endpoint for endpoint, _ in load_config(FLEET_YAML).endpoints(10)]
    assert [row["endpoint"] for row in rows] == fleet_endpoints
    assert fleet_endpoints[0] == "m0p-0001" and "m4f-0001" in fleet_endpoints
    assert [row["identity"] for row in rows] == [endpoint + suffix for endpoint in fleet_endpoints]
    assert {row["scope"] for row in rows} == {scope}
    keys = [bytes.fromhex(row["key"]) for row in rows]
    assert {len(key) for key in keys} == {16} and len(set(keys)) == 10


def test_sim_credentials_never_overwrite_a_key_file(tmp_path: Path, capsys):
    out = tmp_path / "keys.csv"
    out.write_text("keys already handed out\n")
    assert sim("credentials", "--config", str(FLEET_YAML), "--count", "3", "--out", str(out)) == 2
    assert "--out: " in capsys.readouterr().err
    assert out.read_text() == "keys already handed out\n"


def test_sim_credentials_to_stdout_default_to_bootstrap_and_the_whole_fleet(capsys):
    assert sim("credentials", "--config", str(FLEET_YAML)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == load_config(FLEET_YAML).total() == 50
    assert rows[-1]["endpoint"] == "eml-0002" and rows[-1]["identity"] == "eml-0002-bs"


def test_sim_credentials_refuse_an_identity_tinydtls_cannot_take(tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text("fleet:\n  - {profile: cortex-m4f, count: 1, endpoint_prefix: " + "p" * 26 + "}\n")
    assert sim("credentials", "--config", str(config), "--out", str(tmp_path / "k.csv")) == 2
    assert "is 34 bytes, a PSK identity at most 32" in capsys.readouterr().err
    assert not (tmp_path / "k.csv").exists()


# -- tinymlaas-sim fleet --credentials: the checks before anything starts -----------------------


@pytest.fixture
def no_fleet(monkeypatch):
    """Fail the test if the CLI gets as far as building a Fleet."""
    built = []
    monkeypatch.setattr(sim_cli, "Fleet", lambda *a, **k: built.append(a) or pytest.fail("a fleet was started"))
    return built


def write_keys(path: Path, endpoints: list[str], scope: str) -> Path:
    path.write_text(HEADER + "".join(f"{k.endpoint},{k.identity},{k.key.hex()},{k.scope}\n"
                                     for k in generate_keys(endpoints, scope)))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--server", "coaps://127.0.0.1:5684"],
     "--server: 'coaps://127.0.0.1:5684' is coaps://: each device needs its server PSK, so pass --credentials FILE"),
    (["--bootstrap", "coaps://127.0.0.1:5684"],
     "--bootstrap: 'coaps://127.0.0.1:5684' is coaps://: each device needs its bootstrap PSK, so pass --credentials"),
    (["--server", "coap://127.0.0.1:5683", "--credentials", "KEYS"],
     "--credentials: PSKs are for coaps://, and --server is 'coap://127.0.0.1:5683'"),
    (["--bootstrap", "coap://127.0.0.1:5683", "--credentials", "KEYS"],
     "--credentials: PSKs are for coaps://, and --bootstrap is 'coap://127.0.0.1:5683'"),
    (["--server", "http://x", "--credentials", "KEYS"], "--server: must be a coap:// URI, got 'http://x'"),
])
def test_fleet_psk_options_are_checked(tmp_path: Path, capsys, no_fleet, argv, message):
    keys = write_keys(tmp_path / "keys.csv", [f"m0p-{i:04d}" for i in range(1, 6)], "server")
    argv = [str(keys) if arg == "KEYS" else arg for arg in argv]
    assert sim("fleet", "--config", str(FLEET_YAML), "--count", "4", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinymlaas-sim: {message}") and err.count("\n") == 1, err
    assert no_fleet == []


def test_fleet_psk_errors_are_one_line(tmp_path: Path, capsys, no_fleet):
    assert sim("fleet", "--config", str(FLEET_YAML), "--count", "4", "--server", "coaps://127.0.0.1:5684") == 2
    err = capsys.readouterr().err
    assert err.startswith("tinymlaas-sim: --server: 'coaps://127.0.0.1:5684' is coaps://") and err.count("\n") == 1
    assert sim("device", "--profile", "cortex-m4f", "--endpoint", "x", "--server", "coaps://h") == 2
    assert "give the device its PSK with --psk IDENTITY:HEXKEY" in capsys.readouterr().err
    assert sim("device", "--profile", "cortex-m4f", "--endpoint", "x", "--psk", "x:00") == 2
    assert "a PSK is for a coaps:// --server" in capsys.readouterr().err


def test_a_device_without_a_row_stops_the_fleet_before_it_starts(tmp_path: Path, capsys, no_fleet):
    endpoints = [endpoint for endpoint, _ in load_config(FLEET_YAML).endpoints(10)]
    keys = write_keys(tmp_path / "keys.csv", endpoints[:3], "bootstrap")
    assert sim("fleet", "--config", str(FLEET_YAML), "--count", "10", "--bootstrap", "coaps://127.0.0.1:5684",
               "--credentials", str(keys)) == 2
    missing = endpoints[3:]
    assert capsys.readouterr().err == (
        f"tinymlaas-sim: {keys}: no bootstrap PSK for 7 of 10 device(s): {', '.join(missing[:5])} and 2 more\n")
    server_keys = write_keys(tmp_path / "server.csv", endpoints, "server")
    assert sim("fleet", "--config", str(FLEET_YAML), "--count", "10", "--bootstrap", "coaps://127.0.0.1:5684",
               "--credentials", str(server_keys)) == 2
    assert "(it has server-scope rows for them: write it with --scope bootstrap)" in capsys.readouterr().err
    assert no_fleet == []


def test_a_bad_key_file_names_the_line_not_the_key(tmp_path: Path, capsys, no_fleet):
    keys = key_file(tmp_path / "keys.csv", f"m0p-0001,m0p-0001,{KEY.hex()},server", "m0p-0002,m0p-0002,secretZZ,server")
    assert sim("fleet", "--config", str(FLEET_YAML), "--count", "2", "--server", "coaps://127.0.0.1:5684",
               "--credentials", str(keys)) == 2
    err = capsys.readouterr().err
    assert err == f"tinymlaas-sim: {keys}: line 3: key: not hexadecimal (character 1)\n"


def test_key_file_round_trip_and_the_fleet_api_checks_its_psks():
    keys = generate_keys(["a-0001", "a-0002"], "server")
    parsed = parse_key_file(HEADER + "".join(f"{k.endpoint},{k.identity},{k.key.hex()},{k.scope}\n" for k in keys))
    assert parsed == keys and "key=" not in repr(parsed)
    assert psks_for(parsed, ["a-0002"], "server") == {"a-0002": (b"a-0002", keys[1].key)}
    with pytest.raises(ConfigError, match="no bootstrap PSK for 2 of 2 device"):
        psks_for(parsed, ["a-0001", "a-0002"], "bootstrap")
    profile = load_config(FLEET_YAML).profiles["cortex-m4f"]
    with pytest.raises(ValueError, match="psks: no PSK for 1 device.*: a-0003"):
        Fleet([("a-0001", profile), ("a-0003", profile)], "coaps://127.0.0.1:5684", psks={"a-0001": keys[0].psk})
    fleet = Fleet([("a-0001", profile)], "coaps://127.0.0.1:5684", psks={"a-0001": keys[0].psk})
    assert fleet.devices[0].psk == (b"a-0001", keys[0].key)


# -- end to end: a real server in secure-only mode, the CLIs in their own processes ---------------


@pytest.fixture
async def secure_server(tmp_path: Path):
    pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")
    credentials_path = tmp_path / "credentials.sqlite3"
    (tmp_path / "server.yaml").write_text(f"security: {{credentials_path: '{credentials_path}'}}\n")
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    credentials = CredentialStore(credentials_path)
    base = ServerConfig()
    config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, secure_port=0, request_timeout_s=5),
                     security=replace(base.security, mode="secure-only", credentials_path=credentials_path))
    server = LwM2MServer(config, ObjectRegistry.default(), store, credentials=credentials, trust_anchors=[])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await store.close()
        credentials.close()


async def run(*argv: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("scope", ["bootstrap", "server"])
async def test_a_fleet_provisioned_from_a_key_file_registers_over_coaps_only(secure_server, tmp_path, scope):
    server: LwM2MServer = secure_server
    keys = tmp_path / "keys.csv"
    code, _, err = await run("-m", "simulators.cli", "credentials", "--config", str(FLEET_YAML), "--count", "10",
                             "--scope", scope, "--out", str(keys), cwd=ROOT)
    assert code == 0, err
    code, out, err = await run("-m", "lwm2m_server.cli", "credentials", "import", str(keys),
                               "--config", str(tmp_path / "server.yaml"), cwd=tmp_path)
    assert (code, out) == (0, f"imported 10 credential(s) from {keys}: 10 added, 0 replaced\n"), err
    rows = read_rows(keys)
    assert all(row["key"] not in out + err for row in rows)

    uri = f"coaps://127.0.0.1:{server.secure_port}"
    target = ["--bootstrap", uri] if scope == "bootstrap" else ["--server", uri]
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "fleet", "--config", str(FLEET_YAML), "--count", "10", *target,
        "--credentials", str(keys), "--timeout", "10", "--duration", "120", cwd=ROOT,
        stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):  # without a terminal it prints the first and the final count
            while not (match := re.match(r"registered (\d+)/10, failures (\d+)", lines[-1] if lines else "")) \
                    or int(match[1]) + int(match[2]) < 10:
                line = (await fleet.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        assert lines[-1] == "registered 10/10, failures 0\n", "".join(lines)

        registrations = {r.endpoint: r for r in server.registrations()}
        assert sorted(registrations) == sorted(row["endpoint"] for row in rows)
        for endpoint, registration in registrations.items():
            assert registration.address.startswith("coaps://"), registration.address  # none over plain CoAP
            server_psk = server.credentials.psk_for_endpoint(endpoint, "server")
            assert registration.identity == server_psk.identity
            if scope == "server":  # the row of the key file itself
                assert registration.identity == endpoint
                assert server_psk.key == bytes.fromhex(next(r["key"] for r in rows if r["endpoint"] == endpoint))
            else:  # bootstrap made a fresh server PSK
                bootstrap_psk = server.credentials.psk_for_endpoint(endpoint, "bootstrap")
                assert bootstrap_psk.identity == f"{endpoint}-bs" and server_psk.key != bootstrap_psk.key
    finally:
        if fleet.returncode is None:
            fleet.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(fleet.stderr.read(), 30)
        await asyncio.wait_for(fleet.wait(), 30)
    assert fleet.returncode == 0, rest
    assert server.registrations() == []  # every device de-registered over its DTLS session


async def test_one_device_with_its_server_psk_registers_over_coaps(secure_server, tmp_path):
    server: LwM2MServer = secure_server
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    server.credentials.add(PskCredential("solo-1", "solo-1", key), now=1.0)
    device = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "device", "--profile", "cortex-m4f", "--endpoint", "solo-1",
        "--server", f"coaps://127.0.0.1:{server.secure_port}", "--psk", f"solo-1:{key.hex()}",
        "--timeout", "10", "--duration", "60", cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(device.stderr.readline(), 30)).decode()
        assert line.startswith("solo-1 registered at /rd/"), line
        registration = server.registration("solo-1")
        assert registration.identity == "solo-1" and registration.address.startswith("coaps://")
    finally:
        device.send_signal(signal.SIGTERM)
        await asyncio.wait_for(device.wait(), 30)
    assert server.registration("solo-1") is None  # de-registered over its session


def test_a_device_key_can_come_from_a_file_or_stdin_instead_of_the_command_line(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "m4f.key").write_text(KEY.hex() + "\n")
    assert sim_cli._psk("--psk", f"m4f-0001:@{tmp_path / 'm4f.key'}") == (b"m4f-0001", KEY)
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY.hex() + "\n"))
    assert sim_cli._psk("--bootstrap-psk", "m4f-0001-bs:-") == (b"m4f-0001-bs", KEY)
    assert sim("device", "--profile", "cortex-m4f", "--endpoint", "m4f-0001", "--server", "coaps://127.0.0.1:5684",
               "--psk", f"m4f-0001:@{tmp_path / 'missing.key'}") == 2
    assert capsys.readouterr().err == f"tinymlaas-sim: --psk: cannot read {tmp_path / 'missing.key'}: No such file or directory\n"
