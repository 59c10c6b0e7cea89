"""The security store of DTLS PSK credentials: limits that protect tinydtls, the
SQLite file (mode 0600, faults, another process's changes), the ``credentials``
CLI, the management API routes and the daemon's wiring. A key never shows up
anywhere but in ``credentials add --generate`` output."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from lwm2m_server.api.http import ManagementApi
from lwm2m_server.cli.main import main as cli_main
from lwm2m_server.config import parse_config
from lwm2m_server.security.credentials import CredentialConflict, CredentialStorageError, CredentialStore
from lwm2m_server.security.psk import SCOPES, CredentialError, PskCredential, generate_key, parse_key
from lwm2m_server.daemon import Daemon

KEY = bytes.fromhex("c0ffee00112233445566778899aabbcc")
KEY_HEX = KEY.hex()
TOKEN = "t" * 32


def cred(endpoint="dev1", identity=None, key=KEY, scope="server", created=0.0) -> PskCredential:
    return PskCredential(endpoint, identity or endpoint, key, scope, created)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "credentials.sqlite3"


@pytest.fixture
def store(db_path: Path):
    with CredentialStore(db_path) as store:
        yield store


# -- the credential value ---------------------------------------------------------------


def test_scopes():
    assert SCOPES == ("server", "bootstrap")


@pytest.mark.parametrize("endpoint", ["d", "e" * 255, "é" * 127 + "a", "urn:imei:490154203237518", "ünï cödé"])
def test_endpoint_within_limits(endpoint):
    assert cred(endpoint, identity="id").endpoint == endpoint


@pytest.mark.parametrize("endpoint, problem", [
    ("", "must not be empty"),
    ("e" * 256, "256 bytes in UTF-8, at most 255"),
    ("é" * 128, "256 bytes in UTF-8, at most 255"),  # 128 characters, 256 bytes
    ("dev\n1", "control character U+000A at character 4"),
    ("dev\x7f", "control character U+007F"),
    ("dev\x85", "control character U+0085"),
    ("dev\ud800", "lone surrogate"),
    (17, "must be a string"),
])
def test_endpoint_limits(endpoint, problem):
    with pytest.raises(CredentialError, match="^endpoint: ") as caught:
        cred(endpoint, identity="id")
    assert problem in caught.value.reason


@pytest.mark.parametrize("identity", ["i", "i" * 32, "é" * 16, "€" * 10 + "ab"])
def test_identity_within_limits(identity):
    assert cred(identity=identity).identity == identity


@pytest.mark.parametrize("identity, problem", [
    ("i" * 33, "33 bytes in UTF-8, at most 32"),
    ("é" * 16 + "a", "33 bytes in UTF-8, at most 32"),
    ("id\x00", "control character U+0000"),
    ("id\t", "control character U+0009"),
])
def test_identity_limits(identity, problem):
    with pytest.raises(CredentialError, match="^identity: ") as caught:
        cred(identity=identity)
    assert problem in caught.value.reason
    if "bytes" in problem:
        assert "DTLS_PSK_MAX_CLIENT_IDENTITY_LEN" in caught.value.reason


def test_empty_identity_is_refused():
    with pytest.raises(CredentialError, match="identity: must not be empty"):
        PskCredential("dev1", "", KEY)


@pytest.mark.parametrize("size", [1, 8, 16])
def test_key_sizes_tinydtls_takes(size):
    assert len(cred(key=b"k" * size).key) == size


def test_empty_key_is_refused():
    with pytest.raises(CredentialError, match="key: must not be empty"):
        cred(key=b"")


@pytest.mark.parametrize("size", [17, 32, 64])
def test_a_longer_key_is_refused_because_it_would_overflow_tinydtls(size):
    key = bytes(range(size))
    with pytest.raises(CredentialError) as caught:
        cred(key=key)
    reason = caught.value.reason
    assert reason.startswith(f"key: {size} bytes, at most 16")
    assert "overflow" in reason and "DTLS_PSK_MAX_KEY_LEN" in reason
    assert key.hex() not in reason and repr(key) not in reason


def test_key_must_be_bytes():
    with pytest.raises(CredentialError, match="key: must be bytes, got str"):
        cred(key=KEY_HEX)


@pytest.mark.parametrize("scope", ["", "Server", "admin", None])
def test_scope_must_be_known(scope):
    with pytest.raises(CredentialError, match="scope: must be one of server, bootstrap"):
        cred(scope=scope)


@pytest.mark.parametrize("created", [float("nan"), float("inf"), -1.0, "yesterday"])
def test_created_must_be_a_time(created):
    with pytest.raises(CredentialError, match="created: "):
        cred(created=created)


def test_repr_and_str_never_show_the_key():
    credential = cred()
    for text in (repr(credential), str(credential), f"{credential}", repr([credential])):
        assert KEY_HEX not in text and repr(KEY) not in text and "key" not in text.replace("KEY", "")
        assert "dev1" in text
    assert "key" not in credential.public()
    assert credential.public() == {"endpoint": "dev1", "identity": "dev1", "scope": "server", "created": 0.0}


def test_credentials_are_immutable():
    credential = cred()
    with pytest.raises(AttributeError):
        credential.key = b"x"  # type: ignore[misc]


# -- keys as text --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "c0ffee00112233445566778899aabbcc",
    "C0FFEE00112233445566778899AABBCC",
    "c0:ff:ee:00:11:22:33:44:55:66:77:88:99:aa:bb:cc",
    "c0 ff ee 00 11 22 33 44\n55 66 77 88 99 aa bb cc\n",
    "  0xc0ffee00112233445566778899aabbcc  ",
])
def test_parse_key_accepts_hex_with_separators(text):
    assert parse_key(text) == KEY


@pytest.mark.parametrize("text, problem", [
    ("c0ffeg", "not hexadecimal (character 6)"),
    ("c0-ff", "not hexadecimal (character 3)"),
    ("c0f", "odd number of hex digits"),
    ("c0 f ee", "separator inside a byte (character 5)"),
    ("", "empty"),
    (" : ", "empty"),
    ("s3cr3t!", "not hexadecimal (character 1)"),
    ("c0ffee٣٣", "not hexadecimal (character 7)"),  # Arabic-Indic digits are not hex
])
def test_parse_key_errors_name_the_position_never_the_text(text, problem):
    with pytest.raises(CredentialError) as caught:
        parse_key(text)
    assert caught.value.reason.startswith(f"key: {problem}")
    if len(text.strip()) > 1:
        assert text.strip() not in str(caught.value)


def test_generate_key_is_16_random_bytes():
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20 and all(len(k) == 16 for k in keys)
    cred(key=generate_key())  # valid as is


# -- the store ----------------------------------------------------------------------------


def test_round_trip_sorted_and_reopened(db_path: Path):
    with CredentialStore(db_path) as store:
        assert store.list() == []
        assert store.add(cred("dev2"), now=20.0) is False
        assert store.add(cred("dev1", "dev1-bs", scope="bootstrap", key=b"\x01"), now=11.0) is False
        assert store.add(cred("dev1"), now=10.0) is False
    with CredentialStore(db_path) as store:  # survives a reopen
        listed = store.list()
        assert [(c.endpoint, c.scope) for c in listed] == [("dev1", "bootstrap"), ("dev1", "server"), ("dev2", "server")]
        assert store.by_identity("dev1") == cred("dev1", created=10.0)
        assert store.by_identity(b"dev1-bs") == cred("dev1", "dev1-bs", scope="bootstrap", key=b"\x01", created=11.0)
        assert store.for_endpoint("dev1") == cred("dev1", created=10.0)
        assert store.for_endpoint("dev1", "bootstrap").identity == "dev1-bs"
        assert store.for_endpoint("dev2", "bootstrap") is None
        assert store.by_identity("nobody") is None


def test_has_any_sees_every_scope_and_mechanism(store):
    from lwm2m_server.security.oscore import OscoreCredential

    store.add(cred("psk-server"))
    store.add(cred("psk-bootstrap", "bs-id", scope="bootstrap"))
    store.add_oscore(OscoreCredential("osc", sender_id=b"\x01", recipient_id=b"\x02", master_secret=bytes(16)))
    assert [store.has_any(ep) for ep in ("psk-server", "psk-bootstrap", "osc", "nobody")] == [True, True, True, False]


def test_created_comes_from_the_credential_without_now(store):
    store.add(cred(created=1234.5))
    assert store.for_endpoint("dev1").created == 1234.5


@pytest.mark.parametrize("identity", ["", "i" * 33, b"\xff\xfe", b"i" * 33])
def test_by_identity_of_an_impossible_identity_is_none(store, identity):
    store.add(cred())
    assert store.by_identity(identity) is None


def test_an_identity_names_one_credential(store):
    store.add(cred("dev1", "shared"))
    with pytest.raises(CredentialConflict) as caught:
        store.add(cred("dev2", "shared"))
    assert caught.value.field == "identity"
    assert "identity 'shared' is already the server credential of endpoint 'dev1'" in caught.value.reason
    with pytest.raises(CredentialConflict, match="identity 'shared'"):  # also across scopes of one endpoint
        store.add(cred("dev1", "shared", scope="bootstrap"), replace=True)
    assert [c.endpoint for c in store.list()] == ["dev1"]


def test_a_second_credential_of_a_scope_needs_replace(store):
    store.add(cred(), now=1.0)
    with pytest.raises(CredentialConflict) as caught:
        store.add(cred(key=b"\x02" * 16), now=2.0)
    assert caught.value.field == "endpoint"
    assert "endpoint 'dev1' already has a server credential" in caught.value.reason
    assert store.for_endpoint("dev1").key == KEY  # unchanged
    assert store.add(cred(identity="dev1-new", key=b"\x02" * 16), replace=True, now=2.0) is True
    assert store.for_endpoint("dev1") == cred(identity="dev1-new", key=b"\x02" * 16, created=2.0)
    assert store.by_identity("dev1") is None  # the old identity is free again
    store.add(cred("dev9", "dev1"))
    assert store.by_identity("dev1").endpoint == "dev9"


def test_replace_adds_when_there_was_nothing(store):
    assert store.add(cred(), replace=True) is False
    assert store.for_endpoint("dev1") is not None


def test_remove(store):
    store.add(cred("dev1"))
    store.add(cred("dev1", "dev1-bs", scope="bootstrap"))
    store.add(cred("dev2"))
    assert store.remove("dev1", "bootstrap") == 1
    assert store.for_endpoint("dev1", "bootstrap") is None and store.for_endpoint("dev1") is not None
    store.add(cred("dev1", "dev1-bs", scope="bootstrap"))
    assert store.remove("dev1") == 2
    assert store.remove("dev1") == 0
    assert [c.endpoint for c in store.list()] == ["dev2"]
    with pytest.raises(CredentialError, match="scope: must be one of"):
        store.remove("dev2", "admin")


def test_get_or_create(store):
    first = store.get_or_create("dev1", now=5.0)
    assert first.identity == "dev1" and len(first.key) == 16 and first.created == 5.0
    assert store.get_or_create("dev1", now=9.0) == first  # the same one again
    bootstrap = store.get_or_create("dev1", "bootstrap", now=6.0)  # "dev1" is taken: a random identity
    assert bootstrap.identity.startswith("psk-") and bootstrap.key != first.key
    long = store.get_or_create("x" * 40, now=7.0)
    assert long.identity.startswith("psk-") and store.by_identity(long.identity) == long


def test_file_and_its_wal_files_are_private(db_path: Path, store):
    store.add(cred())
    assert db_path.parent.is_dir()
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_file_is_private_whatever_the_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        CredentialStore(tmp_path / "c.sqlite3").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.sqlite3").stat().st_mode) == 0o600


def test_an_existing_file_readable_by_others_is_tightened(db_path: Path):
    CredentialStore(db_path).close()
    db_path.chmod(0o644)
    with capture_logs() as logs, CredentialStore(db_path):
        pass
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert [e["event"] for e in logs] == ["credentials_file_mode_tightened"]


def test_another_instance_sees_changes_at_once(db_path: Path):
    with CredentialStore(db_path) as daemon_side, CredentialStore(db_path) as cli_side:
        assert daemon_side.by_identity("dev1") is None
        cli_side.add(cred())
        assert daemon_side.by_identity("dev1") == cred()
        cli_side.add(cred(key=b"\x07"), replace=True)
        assert daemon_side.by_identity("dev1").key == b"\x07"
        cli_side.remove("dev1")
        assert daemon_side.by_identity("dev1") is None


def test_another_process_adding_is_seen_by_an_open_store(tmp_path: Path):
    (tmp_path / "server.yaml").write_text("security: {credentials_path: creds.sqlite3}\n")
    with CredentialStore(tmp_path / "creds.sqlite3") as open_store:
        assert open_store.list() == []
        result = subprocess.run(
            [sys.executable, "-m", "lwm2m_server.cli", "credentials", "add", "dev7", "--key", KEY_HEX,
             "--config", "server.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert open_store.by_identity("dev7") is not None and open_store.by_identity("dev7").key == KEY


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "notes.sqlite3"
    garbage = b"shopping list: eggs, milk\n" * 200
    path.write_bytes(garbage)
    path.chmod(0o644)
    with pytest.raises(CredentialStorageError) as caught:
        CredentialStore(path)
    assert str(path) in caught.value.reason and "not a SQLite database" in caught.value.reason
    assert path.read_bytes() == garbage and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_corrupt_file_is_refused(db_path: Path):
    with CredentialStore(db_path) as store:
        for i in range(300):
            store.add(cred(f"dev{i:03d}"))
    data = bytearray(db_path.read_bytes())
    data[4096:8192] = b"\xa5" * 4096  # smash page 2
    db_path.write_bytes(bytes(data))
    with pytest.raises(CredentialStorageError, match=str(db_path)) as caught:
        CredentialStore(db_path).list()
    assert "corrupt" in caught.value.reason or "not a SQLite database" in caught.value.reason


def test_another_programs_database_is_refused(tmp_path: Path):
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE registrations (id TEXT)")
    raw.close()
    with pytest.raises(CredentialStorageError, match="not a credentials store") as caught:
        CredentialStore(path)
    assert str(path) in caught.value.reason


def test_a_newer_schema_is_refused(db_path: Path):
    CredentialStore(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA user_version = 7")
    raw.close()
    with pytest.raises(CredentialStorageError, match="schema version 7 is newer than this program's 2") as caught:
        CredentialStore(db_path)
    assert str(db_path) in caught.value.reason


def test_a_folder_that_cannot_be_created(tmp_path: Path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(CredentialStorageError, match=str(blocker / "c.sqlite3")):
        CredentialStore(blocker / "c.sqlite3")


def test_a_folder_as_the_path(tmp_path: Path):
    with pytest.raises(CredentialStorageError, match=f"{tmp_path}: cannot create or open the file"):
        CredentialStore(tmp_path)


def test_a_read_only_folder(tmp_path: Path):
    folder = tmp_path / "ro"
    path = folder / "c.sqlite3"
    CredentialStore(path).close()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    path.chmod(stat.S_IRUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("root ignores chmod; run without CAP_DAC_OVERRIDE (e.g. setpriv "
                        "--bounding-set -dac_override,-dac_read_search,-fowner) to run this")
        with pytest.raises(CredentialStorageError, match=str(path)):
            CredentialStore(path)
    finally:
        folder.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_failed_replace_loses_nothing(db_path: Path, store):
    store.add(cred())
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TRIGGER fail BEFORE INSERT ON credentials WHEN NEW.identity = 'new' "
                "BEGIN SELECT RAISE(ABORT, 'simulated I/O failure'); END")
    raw.commit()
    raw.close()
    # the old row is deleted first in the same transaction: the failure must roll that back
    with pytest.raises(CredentialStorageError, match="simulated I/O failure") as caught:
        store.add(cred(identity="new", key=b"\x09"), replace=True)
    assert str(db_path) in caught.value.reason
    assert store.list() == [cred()]


def test_a_full_disk_is_an_error_and_loses_nothing(store):
    store.add(cred("dev-first"))
    pages = store._db.execute("PRAGMA page_count").fetchall()[0][0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(CredentialStorageError, match="full"):
        for i in range(2000):
            store.add(cred(f"{i:04d}" + "e" * 250, identity=f"id{i}"))
    assert store.for_endpoint("dev-first") == cred("dev-first")


def test_an_over_long_key_cannot_get_into_the_file_by_hand(db_path: Path, store):
    with sqlite3.connect(db_path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO credentials VALUES ('dev1', 'server', 'dev1', ?, 0)", (b"k" * 17,))
    raw.close()
    assert store.by_identity("dev1") is None


def test_use_after_close(db_path: Path):
    store = CredentialStore(db_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(CredentialStorageError, match="after close"):
        store.by_identity("dev1")


def test_the_store_logs_nothing_but_warnings(store):
    with capture_logs() as logs:
        store.add(cred(), now=1.0)
        store.add(cred(key=b"\x05" * 16), replace=True)
        store.get_or_create("dev2", now=2.0)
        store.by_identity("dev2")
        store.remove("dev1")
    assert logs == []


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CLI configures logging (to stderr); put the process-wide set-up back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield from _workdir(tmp_path, monkeypatch)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.yaml").write_text("security: {credentials_path: secrets/creds.sqlite3}\n")
    yield tmp_path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["credentials", *args, "--config", "server.yaml"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_remove(workdir: Path, capsys):
    assert cli(capsys, "add", "dev1", "--key", KEY_HEX) == (
        0, "added the server credential of dev1 (identity dev1)\n", "")
    code, out, _ = cli(capsys, "add", "dev1", "--identity", "dev1-bs", "--key", "01:02:03", "--bootstrap")
    assert code == 0 and "added the bootstrap credential of dev1 (identity dev1-bs)" in out
    code, out, _ = cli(capsys, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ENDPOINT", "SCOPE", "IDENTITY", "CREATED"]
    assert lines[1].split()[:3] == ["dev1", "bootstrap", "dev1-bs"]
    assert lines[2].split()[:3] == ["dev1", "server", "dev1"]
    assert lines[-1] == "2 credential(s)"
    assert KEY_HEX not in out and "010203" not in out
    code, out, _ = cli(capsys, "list", "--json")
    assert [c["identity"] for c in json.loads(out)] == ["dev1-bs", "dev1"]
    assert all("key" not in c for c in json.loads(out))
    assert cli(capsys, "remove", "dev1", "--scope", "bootstrap")[:2] == (0, "removed 1 credential(s) of dev1\n")
    assert cli(capsys, "remove", "dev1")[:2] == (0, "removed 1 credential(s) of dev1\n")
    code, _, err = cli(capsys, "remove", "dev1")
    assert code == 1 and err == "tinymlaas: endpoint dev1 has no credentials\n"
    with CredentialStore(workdir / "secrets" / "creds.sqlite3") as store:  # the configured file
        assert store.list() == []


def test_cli_generate_prints_the_key_once(workdir: Path, capsys):
    with capture_logs() as logs:
        code, out, err = cli(capsys, "add", "dev1", "--generate")
    assert code == 0 and err == ""
    with CredentialStore(workdir / "secrets" / "creds.sqlite3") as store:
        key = store.for_endpoint("dev1").key
    assert len(key) == 16
    assert out.count(key.hex()) == 1 and "provision it into the device" in out
    assert key.hex() not in repr(logs)
    code, out, _ = cli(capsys, "list")
    assert code == 0 and key.hex() not in out


def test_cli_warnings_go_to_stderr_not_into_the_listing(workdir: Path, capsys):
    assert cli(capsys, "add", "dev1", "--key", KEY_HEX)[0] == 0
    (workdir / "secrets" / "creds.sqlite3").chmod(0o644)
    code, out, err = cli(capsys, "list")
    assert code == 0 and out.splitlines()[0].startswith("ENDPOINT") and out.splitlines()[-1] == "1 credential(s)"
    assert "credentials_file_mode_tightened" in err and "credentials_file_mode_tightened" not in out
    assert stat.S_IMODE((workdir / "secrets" / "creds.sqlite3").stat().st_mode) == 0o600


def test_cli_key_from_stdin(workdir: Path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY_HEX + "\n"))
    assert cli(capsys, "add", "dev1", "--key", "-")[0] == 0
    with CredentialStore(workdir / "secrets" / "creds.sqlite3") as store:
        assert store.by_identity("dev1").key == KEY


def test_cli_key_and_secret_from_a_file_stay_out_of_the_command_line(workdir: Path, capsys):
    (workdir / "dev1.key").write_text(KEY_HEX + "\n")
    assert cli(capsys, "add", "dev1", "--key", f"@{workdir / 'dev1.key'}")[0] == 0
    secret = "00112233445566778899aabbccddeeff"
    (workdir / "dev2.secret").write_text(secret)
    assert cli(capsys, "add", "dev2", "--oscore", "--secret", f"@{workdir / 'dev2.secret'}",
               "--sender-id", "01", "--recipient-id", "02")[0] == 0
    with CredentialStore(workdir / "secrets" / "creds.sqlite3") as store:
        assert store.by_identity("dev1").key == KEY
        assert store.oscore_for_endpoint("dev2").master_secret.hex() == secret
    code, out, err = cli(capsys, "add", "dev3", "--key", f"@{workdir / 'missing.key'}")
    assert code == 1 and err == f"tinymlaas: --key: cannot read {workdir / 'missing.key'}: No such file or directory\n"


def test_cli_bad_input_exits_2_without_echoing_the_key(workdir: Path, capsys):
    code, out, err = cli(capsys, "add", "dev1", "--key", "deadbeefZZsecret")
    assert code == 2 and out == "" and err == "tinymlaas: key: not hexadecimal (character 9)\n"
    code, _, err = cli(capsys, "add", "dev1", "--key", "ab" * 17)
    assert code == 2 and "key: 17 bytes, at most 16" in err and "overflow" in err and "ab" * 17 not in err
    code, _, err = cli(capsys, "add", "dev1", "--identity", "i" * 33, "--key", KEY_HEX)
    assert code == 2 and "identity: 33 bytes" in err
    assert err.count("\n") == 1


def test_cli_conflicts_exit_1_with_a_hint(workdir: Path, capsys):
    cli(capsys, "add", "dev1", "--key", KEY_HEX)
    code, _, err = cli(capsys, "add", "dev1", "--key", "00")
    assert code == 1 and "already has a server credential" in err and "--replace" in err
    code, _, err = cli(capsys, "add", "dev1", "--key", "00", "--bootstrap")  # identity defaults to dev1: taken
    assert code == 1 and "identity 'dev1'" in err and "--identity" in err
    code, out, _ = cli(capsys, "add", "dev1", "--key", "00", "--replace")
    assert code == 0 and out.startswith("replaced the server credential of dev1")


def test_cli_key_and_generate_are_exclusive_and_one_is_needed(workdir: Path, capsys):
    for args in (["add", "dev1"], ["add", "dev1", "--key", "00", "--generate"]):
        with pytest.raises(SystemExit) as caught:
            cli_main(["credentials", *args, "--config", "server.yaml"])
        assert caught.value.code == 2
    assert "--key" in capsys.readouterr().err


def test_cli_unusable_file_exits_1_naming_it(workdir: Path, capsys):
    (workdir / "secrets").mkdir()
    (workdir / "secrets" / "creds.sqlite3").write_bytes(b"not a database at all" * 100)
    code, out, err = cli(capsys, "list")
    assert code == 1 and out == ""
    assert err.startswith("tinymlaas: credentials store secrets/creds.sqlite3:") and err.count("\n") == 1


# -- the management API ----------------------------------------------------------------


@pytest.fixture
async def api(store):
    api = ManagementApi(None, TOKEN, host="127.0.0.1", port=0, credentials=store)  # type: ignore[arg-type]
    await api.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session
    await api.stop()


async def call(session, method: str, path: str, **kwargs) -> tuple[int, object, str]:
    async with session.request(method, f"/api/v1{path}", **kwargs) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None), text


async def test_api_put_list_delete(api, store):
    with capture_logs() as logs:
        status, body, text = await call(api, "PUT", "/credentials/dev1", json={"key": KEY_HEX})
        assert status == 201
        assert body["endpoint"] == "dev1" and body["identity"] == "dev1" and body["scope"] == "server"
        assert body["created"] > 1e9 and "key" not in body and KEY_HEX not in text
        assert store.by_identity("dev1").key == KEY
        status, body, _ = await call(api, "PUT", "/credentials/dev1", json={
            "identity": "dev1-bs", "key": "aa:bb", "scope": "bootstrap"})
        assert status == 201 and body["scope"] == "bootstrap"
        status, body, text = await call(api, "GET", "/credentials")
        assert status == 200 and [(c["endpoint"], c["scope"], c["identity"]) for c in body] == [
            ("dev1", "bootstrap", "dev1-bs"), ("dev1", "server", "dev1")]
        assert KEY_HEX not in text and "aabb" not in text and all("key" not in c for c in body)
        status, body, _ = await call(api, "PUT", "/credentials/dev1", json={"key": "01", "replace": True})
        assert status == 200 and store.by_identity("dev1").key == b"\x01"
        assert (await call(api, "DELETE", "/credentials/dev1?scope=bootstrap"))[0] == 204
        assert store.for_endpoint("dev1", "bootstrap") is None and store.for_endpoint("dev1") is not None
        assert (await call(api, "DELETE", "/credentials/dev1"))[0] == 204
        status, body, _ = await call(api, "DELETE", "/credentials/dev1")
        assert status == 404 and body == {"error": "endpoint 'dev1' has no credentials"}
    assert KEY_HEX not in repr(logs) and "aabb" not in repr(logs)
    assert {"credential_stored", "credentials_removed"} <= {e["event"] for e in logs}


async def test_api_conflicts_are_409(api):
    assert (await call(api, "PUT", "/credentials/dev1", json={"key": KEY_HEX}))[0] == 201
    status, body, _ = await call(api, "PUT", "/credentials/dev1", json={"key": "00"})
    assert status == 409 and "already has a server credential" in body["error"]
    status, body, _ = await call(api, "PUT", "/credentials/dev2", json={"key": "00", "identity": "dev1"})
    assert status == 409 and "identity 'dev1'" in body["error"]


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "body is not JSON: Expecting property name enclosed in double quotes at character 1"),
    (b"\xff\xfe{", "body is not UTF-8 JSON"),
    (b'["c0ffee"]', "give {"),
    (b"{}", "key: give the key as a hex string"),
    (b'{"key": 12}', "key: give the key as a hex string"),
    (b'{"key": "c0ffeeZZsecret"}', "key: not hexadecimal (character 7)"),
    (b'{"key": "' + b"ab" * 17 + b'"}', "key: 17 bytes, at most 16"),
    (b'{"key": "00", "identity": 5}', "identity: must be a string"),
    (b'{"key": "00", "identity": "' + b"i" * 33 + b'"}', "identity: 33 bytes in UTF-8, at most 32"),
    (b'{"key": "00", "scope": "admin"}', "scope: must be one of server, bootstrap"),
    (b'{"key": "00", "replace": "yes"}', "replace: must be true or false"),
    (b'{"key": "00", "psk": "c0ffee"}', "unknown field(s) 'psk'"),
])
async def test_api_bad_requests_are_400_without_echoing_the_key(api, store, payload, message):
    status, body, text = await call(api, "PUT", "/credentials/dev1", data=payload,
                                    headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"].startswith(message), body
    for secret in ("c0ffee", "ab" * 17):
        assert secret not in text
    assert store.list() == []


async def test_api_bad_scope_on_delete(api):
    status, body, _ = await call(api, "DELETE", "/credentials/dev1?scope=all")
    assert status == 400 and "scope" in body["error"]


async def test_api_needs_the_token(api):
    async with aiohttp.ClientSession() as anonymous:
        url = str(api._base_url.with_path("/api/v1/credentials"))
        async with anonymous.get(url) as response:
            assert response.status == 401
        async with anonymous.put(f"{url}/dev1", json={"key": KEY_HEX}) as response:
            assert response.status == 401


async def test_api_storage_failure_is_503(api, store):
    store.close()
    with capture_logs() as logs:
        status, body, _ = await call(api, "GET", "/credentials")
    assert status == 503 and body == {"error": "credentials storage unavailable"}
    assert logs[0]["event"] == "credentials_store_failed" and "after close" in logs[0]["error"]


# -- the daemon ---------------------------------------------------------------------------


async def test_daemon_opens_the_store_and_serves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config({
        "coap": {"host": "127.0.0.1", "port": 0, "secure_port": None},
        "api": {"port": 0, "token": TOKEN},
        "security": {"credentials_path": "keys/creds.sqlite3"},
    })
    CredentialStore(tmp_path / "keys" / "creds.sqlite3").close()
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert isinstance(daemon.credentials, CredentialStore)
        assert daemon.credentials.path == Path("keys/creds.sqlite3")
        with CredentialStore(tmp_path / "keys" / "creds.sqlite3") as cli_side:  # as `credentials add` does
            cli_side.add(cred("dev5"), now=1.0)
        assert daemon.credentials.by_identity("dev5") == cred("dev5", created=1.0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async with session.get(f"http://127.0.0.1:{daemon.api.port}/api/v1/credentials") as response:
                assert response.status == 200
                assert [c["endpoint"] for c in await response.json()] == ["dev5"]
    finally:
        await daemon.stop()
    with pytest.raises(CredentialStorageError, match="after close"):
        daemon.credentials.list()


def test_serve_with_an_unusable_store_exits_1_with_one_line(tmp_path: Path):
    (tmp_path / "server.yaml").write_text(
        'coap: {host: "127.0.0.1", port: 0, secure_port: null}\napi: {port: 0}\n'
        "security: {credentials_path: creds.sqlite3}\nlogging: {format: json}\n")
    (tmp_path / "creds.sqlite3").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("tinymlaas:")]
    assert lines == [line for line in result.stderr.splitlines() if "creds.sqlite3" in line]
    assert len(lines) == 1
    assert lines[0].startswith("tinymlaas: security.credentials_path: credentials store creds.sqlite3:")
    assert "not a SQLite database" in lines[0]
    assert (tmp_path / "creds.sqlite3").read_bytes() == b"this is not a database" * 100
