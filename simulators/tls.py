"""A throwaway certificate authority for the broker's TLS listener in tests and the demo.

Real deployments get their certificates from `lastmile depot provision`; here a CA and a server
certificate for 127.0.0.1/localhost are made on the spot with the same code
(`depot.provision`), so clients verify the broker exactly as they would in the field (CA pinning
and hostname check), with nothing downloaded.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from depot.provision import cert_pem, issue, make_ca, write_pair


@dataclass(frozen=True)
class TestPki:
    """Files of a CA and one server certificate signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, host: str = "127.0.0.1") -> TestPki:
    """Write ca.crt, server.crt and server.key (P-256) into `directory` (new files only)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca(host, now)
    write_pair(directory, "server", issue(ca, host, now, server_names=[host, "localhost"]))
    pki = TestPki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_file.write_bytes(cert_pem(ca.cert))
    return pki
