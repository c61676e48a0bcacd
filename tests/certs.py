"""A throwaway certificate authority and a server certificate for 127.0.0.1/localhost, made with the
openssl command line (Debian's), for the TLS tests of Mosquitto and of Kafka behind stunnel."""

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # the CA certificate clients trust
    cert_file: Path  # the server's certificate, signed by the CA
    key_file: Path  # the server's private key

    @property
    def combined_file(self) -> Path:
        """Certificate and key in one PEM file (stunnel's `cert =`)."""
        return self.cert_file.with_name("server-combined.pem")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path, *, days: int = 2) -> Certificates:
    """A CA and a server certificate valid for localhost and 127.0.0.1, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", "/CN=evdash test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", str(days), "-extfile", "server.ext", "-out", "server.pem", cwd=directory)  # fmt: skip
    certificates = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    certificates.combined_file.write_bytes(certificates.cert_file.read_bytes() + certificates.key_file.read_bytes())
    for private in (directory / "ca.key", certificates.key_file, certificates.combined_file):
        private.chmod(0o600)
    return certificates
