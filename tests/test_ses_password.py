"""``mailops ses smtp-password`` against AWS's description of the algorithm.

The reference below is written from AWS's page "Obtaining Amazon SES SMTP credentials"
(the pseudocode that converts a secret access key), step by step, without the module's
code: the signing key starts as "AWS4" + secret, is signed in turn with the date
"11111111", the region, the service "ses", the terminal "aws4_request" and the message
"SendRawEmail"; the result gets the version byte 0x04 in front and is base64-encoded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import io
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailops import exitcodes
from mailops.ses import smtp_password as sp

REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "eu-south-2",
    "ap-southeast-2",
    "ap-northeast-3",
    "ca-central-1",
    "sa-east-1",
    "il-central-1",
    "us-gov-west-1",
]
# What secret access keys are made of (base64 without padding), plus a few others.
ALPHABET = string.ascii_letters + string.digits + "+/"
ROOT = Path(__file__).resolve().parent.parent


def aws_reference(secret: str, region: str) -> str:
    def hmac_sha256(key: bytes, message: str) -> bytes:
        return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()

    date = "11111111"
    service = "ses"
    terminal = "aws4_request"
    message = "SendRawEmail"
    version = 0x04
    signature = hmac_sha256(("AWS4" + secret).encode("utf-8"), date)
    signature = hmac_sha256(signature, region)
    signature = hmac_sha256(signature, service)
    signature = hmac_sha256(signature, terminal)
    signature = hmac_sha256(signature, message)
    return base64.b64encode(bytes([version]) + signature).decode("ascii")


def test_known_vector() -> None:
    # AWS's documentation example secret key, us-east-1.  The expected value was
    # computed with openssl (an implementation independent of both Python ones):
    #   k=$(printf 'AWS4%s' "$KEY" | xxd -p -c 256)
    #   for m in 11111111 us-east-1 ses aws4_request SendRawEmail; do
    #     k=$(printf '%s' "$m" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$k -binary \
    #         | xxd -p -c 256); done
    #   (printf 04; echo $k) | xxd -r -p | base64
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    expected = "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9"
    assert sp.smtp_password(key, "us-east-1") == expected
    assert aws_reference(key, "us-east-1") == expected


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_reference_over_random_keys_and_regions(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        secret = "".join(rng.choice(ALPHABET) for _ in range(rng.choice([40, 40, 20, 64])))
        region = rng.choice(REGIONS)
        got = sp.smtp_password(secret, region)
        assert got == aws_reference(secret, region), (secret, region)
        raw = base64.b64decode(got)
        assert raw[0] == 4 and len(raw) == 33


def test_the_region_changes_the_password() -> None:
    key = "a" * 40
    assert len({sp.smtp_password(key, r) for r in REGIONS}) == len(REGIONS)


@pytest.mark.parametrize("region", ["", "US-EAST-1", "us-east", "useast1", "us-east-1; rm"])
def test_a_region_that_is_not_one_is_refused(region: str) -> None:
    with pytest.raises(ValueError, match="region"):
        sp.smtp_password("a" * 40, region)


@pytest.mark.parametrize("text", ["", "\n\n", "Xk3 Yq9\n", "Xk3a\nYq9b\n"])
def test_bad_input_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(sp.BadKey) as info:
        sp.smtp_password(sp.read_secret(io.StringIO(text)), "us-east-1")
    for word in text.split():
        assert word not in str(info.value)


def run_cli(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailops", "ses", "smtp-password", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(ROOT / "scripts")},
    )


def test_cli_reads_stdin_and_prints_only_the_password() -> None:
    secret = "".join(random.Random(7).choice(ALPHABET) for _ in range(40))
    proc = run_cli(f"  {secret}  \n", "--region", "eu-west-1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == aws_reference(secret, "eu-west-1") + "\n"
    assert proc.stderr == ""


def test_cli_errors_never_show_the_secret() -> None:
    secret = "S3cretPart1 S3cretPart2"  # a space: refused
    proc = run_cli(secret + "\n", "--region", "eu-west-1")
    assert proc.returncode == exitcodes.DATAERR
    assert proc.stdout == ""
    assert "S3cretPart" not in proc.stderr and proc.stderr


def test_cli_refuses_a_bad_region_before_reading_the_secret() -> None:
    proc = run_cli("whatever-secret-value\n", "--region", "nowhere")
    assert proc.returncode == 2
    assert "whatever-secret-value" not in proc.stdout + proc.stderr


def _vars_file_names() -> dict[str, str]:
    """The credential files playbooks/ses.yml writes, by variable, from its vars file."""
    data = yaml.safe_load((ROOT / "playbooks" / "vars" / "ses.yml").read_text())
    return {k: Path(v).name for k, v in data.items() if k.endswith("_file")}


def test_the_lab_secrets_check_finds_the_ses_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/lab.py's secrets check (make test: no generated secret in the converge's
    --diff/-vvv output) looks for every secret file under .lab/secrets.  The SES files,
    named as playbooks/ses.yml writes them (ses_smtp_credentials_dir under .lab/secrets
    in the lab), must be among what it looks for; the key id (the SMTP user name,
    printed in Postfix's maps) must not be."""
    spec = importlib.util.spec_from_file_location("lab_for_ses_test", ROOT / "tools" / "lab.py")
    assert spec and spec.loader
    lab = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, lab)  # its dataclasses look it up there
    spec.loader.exec_module(lab)
    monkeypatch.setattr(lab, "STATE", tmp_path)
    names = _vars_file_names()
    where = tmp_path / "secrets" / "ses"
    where.mkdir(parents=True)
    secret = "".join(random.Random(3).choice(ALPHABET) for _ in range(40))
    password = sp.smtp_password(secret, "eu-west-1")
    (where / names["ses__secret_file"]).write_text(secret + "\n")
    (where / names["ses__password_file"]).write_text(password + "\n")
    (where / names["ses__key_id_file"]).write_text("AKIAEXAMPLEKEYID0001\n")
    found = lab.secret_strings()
    assert sorted(v for values in found.values() for v in values) == sorted([secret, password])
    log = tmp_path / "converge.log"
    log.write_text(f"ok: [mail1] => sasl_passwd AKIAEXAMPLEKEYID0001:{password}\n")
    searched, leaks = lab.leaked_secrets([log])
    assert searched == 2
    assert leaks == [f"secrets/ses/{names['ses__password_file']} in converge.log"]
