"""``cbec validate``: readable and JSON output, exit codes, many files in one call."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.cli import main

SAMPLES = Path(__file__).parent / "data" / "samples"
GOOD = sorted(str(p) for p in SAMPLES.glob("CEB*.xml"))
BROKEN = str(SAMPLES / "broken-CEB311-actural-paid.xml")


def test_all_valid_files_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    # import CEB311/411/511/621 and export CEB303/403/505/603 and transport CEB507/509/607, each 9610 and 1210; the
    # 1210 inventory's summary application CEB701; the 9610 parcel's return CEB213 and its tally CEB215
    assert len(GOOD) == 25
    assert main(["validate", *GOOD]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid CEB") == 25
    assert "25 valid, 0 invalid" in out


def test_export_files_are_judged(capsys: pytest.CaptureFixture[str]) -> None:
    """Export messages (spec §4) go through the export schema and rules: the good samples pass (their CEB603
    signatures verify), each broken one names its one rule."""
    export = [f for f in GOOD if Path(f).name[:6] in ("CEB303", "CEB403", "CEB505", "CEB603", "CEB507", "CEB509",
                                                       "CEB607", "CEB701", "CEB213", "CEB215")]  # fmt: skip
    assert main(["validate", "--verify-signatures", *export]) == 0
    assert "17 valid, 0 invalid" in capsys.readouterr().out
    broken = {"broken-CEB603-total-price.xml": ("CEB603", "rule.total_price_mismatch",
                                                "/CEB603Message/Inventory[1]/InventoryList[1]/totalPrice"),
              "broken-CEB303-empty-ebp-name.xml": ("CEB303", "rule.required_empty",
                                                   "/CEB303Message/Order[1]/OrderHead/ebpName"),
              "broken-CEB603-1210-no-ems-no.xml": ("CEB603", "rule.mode_field_missing",
                                                   "/CEB603Message/Inventory[1]/InventoryHead")}  # fmt: skip
    assert main(["validate", "--json", *(str(SAMPLES / name) for name in broken)]) == 1
    results = json.loads(capsys.readouterr().out)
    found = {Path(r["file"]).name: (r["message_type"], *[(e["code"], e["path"]) for e in r["errors"]]) for r in results}
    assert found == {name: (code, (rule, path)) for name, (code, rule, path) in broken.items()}


def test_an_invalid_file_exits_1_and_names_code_and_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", GOOD[0], BROKEN]) == 1
    out = capsys.readouterr().out
    assert "INVALID CEB311" in out
    assert "rule.actural_paid_mismatch at /CEB311Message/Order[1]/OrderHead/acturalPaid" in out


def test_json_output_is_one_array_with_one_object_per_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", *GOOD[:2], BROKEN]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [*GOOD[:2], BROKEN]
    assert [r["valid"] for r in results] == [True, True, False]
    assert results[0]["message_type"] == Path(GOOD[0]).name.split("-")[0]
    assert results[0]["errors"] == []
    broken = results[2]
    assert broken["message_type"] == "CEB311"
    assert broken["errors"] == [
        {
            "layer": "rule",
            "code": "rule.actural_paid_mismatch",
            "path": "/CEB311Message/Order[1]/OrderHead/acturalPaid",
            "message": broken["errors"][0]["message"],
        }
    ]
    assert "acturalPaid" in broken["errors"][0]["message"]


def _inventory_file(tmp_path: Path, name: str, mode: str, **fields: str) -> str:
    """A sample inventory (XML, signed as an agent signs it) whose document carries ``fields`` besides its own."""
    import random

    from gateway import samples
    from gateway.render import render
    from tests.apiutil import sign_as_agent

    payload = samples.shipment(random.Random(5), mode=mode).inventory
    payload["documents"][0].update(fields)
    f = tmp_path / name
    f.write_bytes(render(payload, signer=sign_as_agent))
    return str(f)


WARNED_PATH = "/CEB621Message/Inventory[1]/InventoryHead/emsNo"


def test_a_warning_leaves_the_file_valid_and_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 9610 inventory naming an account book (bonded only, spec §3.4) is valid, exit 0: the warning is printed under
    it and counted in the last line."""
    warned = _inventory_file(tmp_path, "warned.xml", "9610", emsNo="T4604W000001")
    assert main(["validate", GOOD[0], warned]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{warned}: valid CEB621 (1 warning)" in out
    [line] = [o for o in out if o.startswith("  warning ")]
    assert line.startswith(f"  warning [rule] rule.mode_field_unexpected at {WARNED_PATH}: emsNo is 'T4604W000001'")
    assert out[-1] == "2 valid, 0 invalid, 1 with warnings"


def test_json_output_carries_the_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: each object's warnings ([] when none), the file valid; a file refused for an error lists its errors."""
    warned = _inventory_file(tmp_path, "warned.xml", "9610", emsNo="T4604W000001")
    bonded = _inventory_file(tmp_path, "bonded.xml", "1210", trafNo="CZ3090", voyageNo="20261120")
    assert main(["validate", "--json", GOOD[0], warned, bonded, BROKEN]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [(r["valid"], [(w["code"], w["path"]) for w in r["warnings"]]) for r in results] == [
        (True, []),
        (True, [("rule.mode_field_unexpected", WARNED_PATH)]),
        (True, [("rule.mode_field_unexpected", "/CEB621Message/Inventory[1]/InventoryHead/trafNo"),
                ("rule.mode_field_unexpected", "/CEB621Message/Inventory[1]/InventoryHead/voyageNo")]),
        (False, []),
    ]  # fmt: skip
    assert results[1]["errors"] == [] and results[1]["warnings"][0]["layer"] == "rule"


def test_hostile_and_foreign_files_are_reported_not_crashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xxe = tmp_path / "xxe.xml"
    xxe.write_bytes(b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>')
    other = tmp_path / "other.xml"
    other.write_bytes(b"<invoice/>")
    assert main(["validate", "--json", str(xxe), str(other)]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["errors"][0]["code"] for r in results] == ["parse.dtd_forbidden", "parse.unknown_message_type"]
    assert all(r["message_type"] is None for r in results)


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", GOOD[0], str(tmp_path / "missing.xml")]) == 2
    results = json.loads(capsys.readouterr().out)
    assert results[1]["errors"][0]["code"] == "io.unreadable"


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_thousands_of_files_in_one_call_as_a_real_process(tmp_path: Path) -> None:
    files = []
    for i in range(1500):
        src = GOOD[i % len(GOOD)]
        dst = tmp_path / f"{i:04d}-{Path(src).name}"
        shutil.copyfile(src, dst)
        files.append(str(dst))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", "--json", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert len(results) == 1500 and all(r["valid"] for r in results)


def test_serve_with_processes_shares_metrics_through_a_fresh_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """cbec serve --processes N names a fresh folder in its data folder for the processes' /metrics files, removes
    it after, and removes one a killed serve left behind."""
    from gateway import cli, config

    monkeypatch.delenv(config.METRICS_SHARED_DIR_ENV, raising=False)
    with cli._shared_metrics(1, tmp_path):
        assert config.METRICS_SHARED_DIR_ENV not in os.environ  # one process: nothing to share
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"metrics-{int(dead.stdout)}"  # a serve that is gone (its process ended)
    left.mkdir()
    (left / "counter_1.db").write_bytes(b"x")
    with cli._shared_metrics(3, tmp_path):
        folder = Path(os.environ[config.METRICS_SHARED_DIR_ENV])
        assert folder == (tmp_path / f"metrics-{os.getpid()}").resolve() and not any(folder.iterdir())
        assert not left.exists()
    assert config.METRICS_SHARED_DIR_ENV not in os.environ and not folder.exists()
    monkeypatch.setenv(config.METRICS_SHARED_DIR_ENV, "/srv/metrics")  # the operator's own folder is kept
    with cli._shared_metrics(3, tmp_path):
        assert os.environ[config.METRICS_SHARED_DIR_ENV] == "/srv/metrics"
    assert os.environ[config.METRICS_SHARED_DIR_ENV] == "/srv/metrics"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[forwarding\n", "not usable"),  # not TOML
        ('[[api_keys]]\nname = "x"\nkey = "k"\nrole = "emperor"\n', "emperor"),
        ('[tax_rates]\nvat = "lots"\n', "vat"),
        ("amount_tolerance = \"x\"\n", "not usable"),
        ("port = [8080]\n", "not usable"),  # a value of the wrong kind
        ("[forwarding.endpoints.customs]\nrate_per_s = {per = 5}\n", "not usable"),
        ("processes = 0\n", "processes must be at least 1"),
        ('trusted_certs = "/nonexistent/trusted.pem"\n', "trusted.pem"),
        (
            '[forwarding.endpoints.a]\nkind = "customs"\nurl = "http://h/a"\n'
            '[forwarding.endpoints.b]\nkind = "customs"\nurl = "http://h/b"\n'
            '[[forwarding.routes]]\nmessage_types = ["CEB311"]\nendpoints = ["a", "b"]\n',
            "2 customs endpoints",
        ),
    ],
)
def test_a_configuration_that_cannot_be_used_is_a_usage_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    for command in (["serve", "--config", str(path)], ["db", "migrate", "--config", str(path)]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("cbec: the configuration is not usable:") and says in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", str(tmp_path / "missing.toml")])
    assert exited.value.code == 2 and "missing.toml" in capsys.readouterr().err


def test_a_misspelt_or_out_of_range_setting_is_refused_not_defaulted(tmp_path: Path) -> None:
    """A typo in a setting's name fell back to its default (the embedded database, a generated key, no signature
    check), a misspelt flag was false, a bad level a traceback later; a key's codes given as one string were split
    into characters, and a repeated key let the last entry win."""
    from gateway import config

    path = tmp_path / "gateway.toml"
    for text, words in (
        ('databse_url = "postgresql://x/y"\n', "unknown setting databse_url"),
        ('[[api-keys]]\nkey = "k"\n', "unknown setting api-keys"),
        ('verify_signatures = "ture"\n', "verify_signatures: 'ture' is no boolean"),
        ('log_level = "verbose"\n', "log_level: must be one of"),
        ("port = 70000\n", "port: must be between 0 and 65535"),
        ("pool_max_size = 1\n", "pool_max_size: must be at least 2"),
        ('signing_algorithm = "sm2"\n', "signing_algorithm: must be one of rsa-sha1, sm2-sm3"),
        ('[[api_keys]]\nkey = "k1"\nrole = "admin"\n[[api_keys]]\nkey = "k1"\nrole = "operator"\n', "repeats the key"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(words)):
            config.load(path, env={})
    with pytest.raises(ValueError, match="forwarding"):
        config.load(env={"CBEC_FORWARDING_ENABLED": "nope"})
    keys = config.load(env={"CBEC_API_KEYS": '[{"key": "k", "role": "submitter", "codes": "46012609BQ"}]'}).api_keys
    assert keys[0].codes == frozenset({"46012609BQ"})


def test_a_misspelt_environment_variable_is_refused_naming_the_closest_known_one(tmp_path: Path) -> None:
    """CBEC_DATABSE_URL was ignored: the gateway ran on the embedded database instead of the one meant."""
    from gateway import config

    with socket.socket() as s:  # a database nothing answers at: had the name been ignored, a quick exit 1
        s.bind(("127.0.0.1", 0))
        unreachable = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/x"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")} | {"CBEC_DATABSE_URL": unreachable}
    for command in (["serve"], ["worker"], ["db", "migrate"]):
        done = subprocess.run(  # its own process: ignoring the name, the command would set up logging and start
            [sys.executable, "-m", "gateway.cli", *command, "--database-url", unreachable, "--data-dir", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.startswith(
            "cbec: the configuration is not usable: unknown environment variable CBEC_DATABSE_URL (did you mean "
            "CBEC_DATABASE_URL?)"
        )
    for name, meant in (("CBEC_LOGLEVEL", "CBEC_LOG_LEVEL"), ("CBEC_WORKER", "CBEC_FORWARDING_WORKER")):
        with pytest.raises(ValueError, match=re.escape(f"{name} (did you mean {meant}?)")):
            config.load(env={name: "1"})
    with pytest.raises(ValueError, match="variables CBEC_QQQ, CBEC_XYZZY;"):
        config.load(env={"CBEC_XYZZY": "", "CBEC_QQQ": "1"})  # even empty; without a near name, no guess
    assert config.load(env={"CBEC_HOST": "::1", "HOST": "x", "cbec_port": "1"}).host == "::1"  # only CBEC_* is ours


def test_every_cbec_variable_the_project_names_is_a_known_one() -> None:
    """The gateway's settings, the configuration file, the schemas folder, the test suite's server and sandbox: a
    name used in the code, the scripts or the documentation must not become a usage error."""
    from gateway import config

    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", root / ".ci" / "run", *(root / "ops").iterdir()]
    for folder in ("gateway", "adapters", "queue", "tests", "docs"):
        files += [f for f in (root / folder).rglob("*") if f.suffix in (".py", ".md", ".toml", ".sh", ".js", ".html")]
    named: dict[str, str] = {}
    for f in files:
        if f.is_file() and f.resolve() != Path(__file__).resolve():  # this file's misspelt examples
            for name in re.findall(r"CBEC_[A-Z0-9_]+", f.read_text(encoding="utf-8", errors="replace")):
                if not name.endswith("_"):  # a prefix: CBEC_FORWARDING_<NAME>
                    named.setdefault(name, str(f.relative_to(root)))
    assert named.pop("CBEC_DATABSE_URL") == "README.md"  # its example of a misspelt one
    assert {"CBEC_DATABASE_URL", "CBEC_TEST_DATABASE_URL", "CBEC_CUSTOMS_SANDBOX_URL", "CBEC_SCHEMA_DIR"} <= set(named)
    assert {n: f for n, f in named.items() if n not in config.ENV_NAMES} == {}


def test_a_worker_with_forwarding_disabled_says_so_and_does_nothing(tmp_path: Path) -> None:
    """With forwarding.enabled = false no worker runs (README); `cbec worker` delivered the queued jobs all the
    same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")} | {"CBEC_FORWARDING_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "worker", "--data-dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and "forwarding is disabled" in done.stderr
    assert not (tmp_path / "pgdata").exists()  # stopped before starting a database


def test_a_worker_without_a_database_url_refuses_to_start_its_own(tmp_path: Path) -> None:
    """A worker delivers what the gateway's database queues: with no database URL and no cbec serve's embedded
    server running in its data directory, it started an empty embedded PostgreSQL of its own and delivered nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "worker", "--data-dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("cbec: the configuration is not usable: cbec worker needs the gateway's database: "
                                  "--database-url, CBEC_DATABASE_URL or database_url"), done.stderr[-2000:]
    assert not (tmp_path / "pgdata").exists()  # nothing started


def test_the_embedded_server_a_worker_may_join_is_seen_running(tmp_path: Path) -> None:
    from gateway import db

    pgdata = tmp_path / "pgdata"
    assert not db.embedded_running(pgdata)
    pg = db.EmbeddedPostgres(pgdata)
    pg.start_sync()
    try:
        assert db.embedded_running(pgdata)
    finally:
        pg.stop_sync()
    assert not db.embedded_running(pgdata)


def test_an_unusable_database_is_one_line_not_a_traceback() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEC_")}
    done = subprocess.run(  # its own process: the command sets up logging for the process it runs in
        [sys.executable, "-m", "gateway.cli", "db", "migrate", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/x"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("cbec: cannot use the database: ") and "Traceback" not in done.stderr


def test_signature_verification_is_configured_from_the_file_or_the_environment(tmp_path: Path) -> None:
    from gateway import config

    cert = Path(__file__).parent / "data" / "signing" / "test-only-rsa-cert.pem"
    assert config.load(env={}).verify_signatures is False
    s = config.load(env={"CBEC_VERIFY_SIGNATURES": "true", "CBEC_TRUSTED_CERTS": str(cert)})
    assert s.verify_signatures is True and s.trusted_certs == cert
    path = tmp_path / "gateway.toml"
    path.write_text(f'verify_signatures = true\ntrusted_certs = "{cert}"\nsigning_agent_code = "4601980H12"\n',
                    encoding="utf-8")  # fmt: skip
    assert config.load(path, env={}).verify_signatures is True
    assert config.load(path, env={}).signing_agent_code == "4601980H12"
    assert config.load(env={"CBEC_SIGNING_AGENT_CODE": "4601980H99"}).signing_agent_code == "4601980H99"
    assert config.load(env={}).signing_agent_code is None


def test_a_key_may_be_configured_by_its_sha256_alone(tmp_path: Path) -> None:
    """A configuration file kept in a repository or a deployment tool need not hold the secrets that open the API: a
    key given as key_sha256 authenticates the key it is the hash of, and nothing else; the same key twice (once in
    plain, once hashed) is refused as a repeat; a malformed hash, or both forms in one entry, are refused."""
    import hashlib

    from gateway import config
    from gateway.auth import KeyRing

    secret = "seller-key-" + "s" * 20
    digest = hashlib.sha256(secret.encode()).hexdigest()
    path = tmp_path / "gateway.toml"
    path.write_text(f'[[api_keys]]\nname = "platform-a"\nkey_sha256 = "{digest.upper()}"\nrole = "submitter"\n'
                    'codes = ["46012609BQ"]\n', encoding="utf-8")  # fmt: skip
    [key] = config.load(path, env={}).api_keys
    assert (key.key, key.key_sha256) == (None, digest)
    ring = KeyRing([key])
    principal = ring.authenticate(secret)
    assert principal is not None and principal.name == "platform-a" and principal.codes == {"46012609BQ"}
    assert ring.authenticate(digest) is None and ring.authenticate(secret + "x") is None
    for entries, words in (
        (f'[{{"key": "{secret}", "role": "admin"}}, {{"key_sha256": "{digest}", "role": "operator"}}]',
         "api_keys[1] (key1) repeats the key"),
        ('[{"key_sha256": "abc", "role": "admin"}]', "api_keys[0].key_sha256 must be 64 hexadecimal digits"),
        (f'[{{"key_sha256": "{"g" * 64}", "role": "admin"}}]', "must be 64 hexadecimal digits"),
        (f'[{{"key": "k", "key_sha256": "{digest}", "role": "admin"}}]', "both a key and a key_sha256"),
        ('[{"role": "admin"}]', "needs at least a key (or its key_sha256)"),
        ('[{"key": "k", "role": "admin", "code": ["x"]}]', "api_keys[0]: unknown setting(s) code"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            config.load(env={"CBEC_API_KEYS": entries})
    with pytest.raises(ValueError, match="needs a key or a key_sha256"):
        config.ApiKey("neither", None, config.Role.ADMIN)


def test_a_key_s_rate_is_read_and_a_rate_that_is_no_positive_number_refused() -> None:
    from gateway import config

    def key(extra: str) -> config.ApiKey:
        [k] = config.load(env={"CBEC_API_KEYS": f'[{{"key": "k", "role": "admin"{extra}}}]'}).api_keys
        return k

    assert (key("").rate_per_s, key("").rate_burst) == (None, None)
    assert (key(', "rate_per_s": 50').rate_per_s, key(', "rate_per_s": 50').burst) == (50.0, 50.0)  # a second's
    assert key(', "rate_per_s": 0.5').burst == 1.0  # never below one request
    assert key(', "rate_per_s": "2.5", "rate_burst": 10').burst == 10.0
    for extra, words in (
        (', "rate_per_s": 0', "api_keys[0].rate_per_s: must be above 0; found 0"),
        (', "rate_per_s": -1', "rate_per_s: must be above 0"),
        (', "rate_per_s": "fast"', "api_keys[0].rate_per_s: must be a number; found 'fast'"),
        (', "rate_per_s": true', "rate_per_s: must be a number"),
        (', "rate_per_s": 5, "rate_burst": 0.5', "rate_burst must be at least 1"),
        (', "rate_burst": 5', "rate_burst without a rate_per_s"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            key(extra)


def test_the_public_url_is_read_as_its_origin_and_anything_else_is_refused(tmp_path: Path) -> None:
    """public_url names where browsers reach the gateway behind a TLS-terminating proxy: kept as the origin a browser
    sends (scheme and host lower-case, the scheme's own port left out); a path, a query, credentials, another scheme
    or no host would never match an Origin, and is refused when the configuration is read."""
    from gateway import config

    assert config.load(env={}).public_url is None
    for given, origin in (
        ("https://CBEC.Zone.example/", "https://cbec.zone.example"),
        ("https://cbec.zone.example:443", "https://cbec.zone.example"),
        ("http://10.1.2.3:8443", "http://10.1.2.3:8443"),
        ("https://[2001:db8::1]:9443", "https://[2001:db8::1]:9443"),
    ):
        assert config.load(env={"CBEC_PUBLIC_URL": given}).public_url == origin, given
    path = tmp_path / "gateway.toml"
    path.write_text('public_url = "https://ops.zone.example"\n', encoding="utf-8")
    assert config.load(path, env={}).public_url == "https://ops.zone.example"
    for bad, words in (
        ("cbec.zone.example", "http or https URL with a host"),
        ("ftp://cbec.zone.example", "http or https URL with a host"),
        ("https://", "http or https URL with a host"),
        ("https://cbec.zone.example/gateway", "scheme and host only"),
        ("https://cbec.zone.example/?a=1", "scheme and host only"),
        ("https://user:pw@cbec.zone.example", "scheme and host only"),
        ("https://cbec.zone.example:99999", "must be a URL"),
    ):
        with pytest.raises(ValueError, match=rf"^public_url: .*{re.escape(words)}"):
            config.load(env={"CBEC_PUBLIC_URL": bad})



def test_the_refused_messages_retention_is_read_and_a_bad_one_refused(tmp_path: Path) -> None:
    from gateway import config

    assert config.load(env={}).rejection_retention_days == 180.0
    assert config.load(env={"CBEC_REJECTION_RETENTION_DAYS": "0"}).rejection_retention_days == 0.0
    path = tmp_path / "gateway.toml"
    path.write_text("rejection_retention_days = 30.5\n", encoding="utf-8")
    assert config.load(path, env={}).rejection_retention_days == 30.5
    for bad in ("-1", "nan", "forever", "1e9"):
        with pytest.raises(ValueError, match=r"^rejection_retention_days: must be"):
            config.load(env={"CBEC_REJECTION_RETENTION_DAYS": bad})
        # the delivered jobs' retention is read the same way (it took any number, NaN included)
        with pytest.raises(ValueError, match=r"^forwarding.done_job_retention_days: must be"):
            config.load(env={"CBEC_FORWARDING_DONE_JOB_RETENTION_DAYS": bad})
    assert config.load(env={"CBEC_FORWARDING_DONE_JOB_RETENTION_DAYS": "0"}).forwarding.done_job_retention_days == 0
    assert config.load(env={}).realtime.payment_data_retention_days == 1095.0  # three years
    path.write_text("[realtime]\npayment_data_retention_days = 0\n", encoding="utf-8")
    assert config.load(path, env={}).realtime.payment_data_retention_days == 0.0
    for bad in ("-1", "nan", '"forever"', "1e9"):
        path.write_text(f"[realtime]\npayment_data_retention_days = {bad}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=r"realtime.payment_data_retention_days: must be"):
            config.load(path, env={})

def test_validate_takes_the_json_a_seller_sends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON document set (docs/json-api.md) is rendered and checked as the API would; its inventory signed as the
    gateway signs one (here with a throwaway key); not JSON at all is parse.invalid_json."""
    import random

    from gateway import samples

    s = samples.shipment(random.Random(3), mode="1210")
    files = []
    for payload in (s.order, s.inventory):
        f = tmp_path / f"{payload['type']}.json"
        f.write_text(json.dumps(payload, ensure_ascii=False, default=str), encoding="utf-8")
        files.append(str(f))
    bad = dict(s.order, documents=[{**s.order["documents"][0], "acturalPaid": "1.00"}])
    (tmp_path / "bad.json").write_text(json.dumps(bad, ensure_ascii=False, default=str), encoding="utf-8")
    (tmp_path / "broken.json").write_text('{"type": "CEB311", ', encoding="utf-8")
    (tmp_path / "shapeless.json").write_text('{"type": "CEB311", "documents": []}', encoding="utf-8")
    assert main(["validate", "--json", *files]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["message_type"], r["valid"]) for r in results] == [("CEB311", True), ("CEB621", True)]
    assert main(["validate", "--json", *(str(tmp_path / f) for f in ("bad.json", "broken.json", "shapeless.json"))]) \
        == 1  # fmt: skip
    bad_result, broken_result, shapeless_result = json.loads(capsys.readouterr().out)
    assert "rule.actural_paid_mismatch" in [e["code"] for e in bad_result["errors"]]
    assert [e["code"] for e in broken_result["errors"]] == ["parse.invalid_json"]
    # a shape the JSON renderer refuses still names its type
    assert (shapeless_result["message_type"], [e["code"] for e in shapeless_result["errors"]]) == \
        ("CEB311", ["json.too_few"])  # fmt: skip


def _production_config(tmp_path: Path, days: int) -> Path:
    """A production-like configuration: a server's database, a key in clear text beside a hashed one, the agent's key
    valid ``days`` days, trusted certificates, a customs relay, a route to an endpoint not configured, a webhook."""
    import hashlib

    from gateway.signing import generate_test_key

    key_pem, cert_pem = generate_test_key("rsa", "agent", days=days)
    (tmp_path / "agent-key.pem").write_bytes(key_pem)
    (tmp_path / "agent-cert.pem").write_bytes(cert_pem)
    (tmp_path / "trusted.pem").write_bytes(cert_pem)
    digest = hashlib.sha256(b"operator-key-" + b"o" * 20).hexdigest()
    cfg = tmp_path / "cbec.toml"
    cfg.write_text(f"""
database_url = "postgresql://postgres:s3cret@127.0.0.1:5432/test"
signing_key_file = "{tmp_path / 'agent-key.pem'}"
signing_cert_file = "{tmp_path / 'agent-cert.pem'}"
verify_signatures = true
trusted_certs = "{tmp_path / 'trusted.pem'}"

[[api_keys]]
name = "platform-a"
key = "platform-a-key-{'p' * 16}"
role = "submitter"
codes = ["46012609BQ"]

[[api_keys]]
name = "zone-ops"
key_sha256 = "{digest}"
role = "operator"

[forwarding.endpoints.customs]
kind = "customs"
url = "https://relay.example/dxp"

[[forwarding.routes]]
message_types = ["CEB311", "CEB411", "CEB511", "CEB621"]
endpoints = ["customs", "nowhere"]

[forwarding.webhooks.seller-a]
codes = ["4601260E35"]
url = "https://seller.example/hooks"
secret = "webhook-secret-{'w' * 10}"
""", encoding="utf-8")
    return cfg


def test_config_check_says_what_a_configuration_would_do_before_it_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cbec config check`: the database answers (its password hidden), the keys by role and those in clear text, the
    agent's key and its certificate's end, the trusted certificates, the endpoints, a route to an endpoint not
    configured, the webhooks; no secret printed. Warnings exit 1; a signing key that cannot be used, 2."""
    cfg = _production_config(tmp_path, days=400)
    assert main(["config", "check", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "ok     database: postgresql://postgres:***@127.0.0.1:5432/test answers" in lines
    assert "ok     API keys: 2 (1 operator, 1 submitter)" in lines
    assert "warn   API keys in clear text (key): platform-a; give their key_sha256 instead, so that the file opens " \
           "nothing" in lines
    assert not any("shorter than" in x for x in lines)  # platform-a's is 31 characters
    assert any(x.startswith("warn   signing_agent_code: unset, so the gateway signs a JSON declaration naming any "
                            "agentCode") for x in lines), out  # fmt: skip
    assert any(x.startswith("ok     signing key: rsa-sha1 ") and re.search(r"valid until \S+ \(39\d days\)$", x)
               for x in lines), out  # fmt: skip
    assert "ok     trusted certificates: 1 from " + str(tmp_path / "trusted.pem") in lines
    # and on_release's default warehouse, which this configuration does not have
    assert "warn   routes name endpoints that are not configured: nowhere, warehouse (ignored)" in lines
    assert "ok     webhooks: 1 sellers (seller-a) through webhook" in lines
    assert lines[-1] == "usable, with warnings"
    assert "s3cret" not in out and "platform-a-key" not in out and "webhook-secret" not in out

    (tmp_path / "soon").mkdir()
    expiring = _production_config(tmp_path / "soon", days=10)
    assert main(["config", "check", "--config", str(expiring)]) == 1
    assert "expires on" in capsys.readouterr().out

    (tmp_path / "agent-key.pem").write_bytes(b"not a key")  # the first configuration's key, overwritten
    assert main(["config", "check", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "not usable" and "error  signing key:" in out


def test_config_check_warns_of_a_short_key_and_of_an_agent_code_left_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key given in clear text shorter than 20 characters is found by trying: named (never shown). The production
    configuration's agent key with signing_agent_code set signs only the agent's declarations: no warning."""
    cfg = _production_config(tmp_path, days=400)
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text('signing_agent_code = "4601980H12"\n' + text.replace(
        "[[api_keys]]", '[[api_keys]]\nname = "seller-b"\nkey = "seller-b-1234"\nrole = "submitter"\n'
        'codes = ["4601260E99"]\n\n[[api_keys]]', 1), encoding="utf-8")  # fmt: skip
    assert main(["config", "check", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert any(x.startswith("warn   API keys shorter than 20 characters: seller-b; a key that short is found by "
                            "trying") for x in out.splitlines()), out  # fmt: skip
    assert "seller-b-1234" not in out and "signing_agent_code: unset" not in out


def test_config_check_of_a_configuration_that_cannot_be_read_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "cbec.toml"
    cfg.write_text("port = = 1", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["config", "check", "--config", str(cfg)])
    assert exc.value.code == 2


def test_config_check_says_why_the_database_does_not_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The server's own words (no such database), and what cbec serve would do (not start; it said "answers 503"); a
    DSN that is none is the configuration's error (exit 2; it was 1, with nothing on stdout)."""
    cfg = tmp_path / "cbec.toml"
    cfg.write_text('database_url = "postgresql://postgres:s3cret@127.0.0.1:5432/cbec_no_such_database"\n',
                   encoding="utf-8")  # fmt: skip
    assert main(["config", "check", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("warn   database:")]
    assert '"cbec_no_such_database" does not exist' in line and "cbec serve and cbec worker do not start" in line
    assert "s3cret" not in out
    cfg.write_text('database_url = "postgres//127.0.0.1/test"\n', encoding="utf-8")
    assert main(["config", "check", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert any(x.startswith("error  database:") and "is no PostgreSQL DSN" in x for x in out.splitlines()), out


def test_two_api_keys_of_one_name_are_refused(tmp_path: Path) -> None:
    """The log, the refused messages and a reload's changes name keys by their names: two of one name could not be told
    apart."""
    cfg = tmp_path / "cbec.toml"
    cfg.write_text('[[api_keys]]\nname = "ops"\nkey = "k-one-0000000000"\nrole = "operator"\n'
                   '[[api_keys]]\nname = "ops"\nkey = "k-two-0000000000"\nrole = "admin"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"api_keys\[1\] is named 'ops', as api_keys\[0\] is"):
        config.load(str(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["config", "check", "--config", str(cfg)])
    assert exc.value.code == 2
