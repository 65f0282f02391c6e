"""Secrets a sweep is handed (in its environment, in its tracking URI) and the check that
none of them is written anywhere it leaves things."""

from pathlib import Path

ENV_SECRETS = {"HF_TOKEN": "hf_envsecret0001", "AWS_SECRET_ACCESS_KEY": "awsenvsecret0002", "DB_PASSWORD": "pwenvsecret0003"}
PASSWORD = "uripassword0004"


def with_password(uri: str) -> str:
    """``http://127.0.0.1:port`` as a URI with a user and password."""
    return uri.replace("http://", f"http://alice:{PASSWORD}@")


def assert_no_secret(outputs: dict[str, str], roots: list[Path]) -> None:
    """No secret in the processes' ``outputs`` nor in any file under ``roots``."""
    files = [p for d in roots for p in d.rglob("*") if p.is_file()]
    places = {where: text.encode() for where, text in outputs.items()} | {str(p): p.read_bytes() for p in files}
    for secret in [PASSWORD, *ENV_SECRETS.values()]:
        leaks = [(where, text[max(0, i - 300):i + 50]) for where, text in places.items() if (i := text.find(secret.encode())) >= 0]
        assert not leaks, leaks
