"""TLS for the scheduler, workers and clients: temporary certificates or the user's files, and the
scheduler file that tells another process how to connect (address plus certificate paths)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distributed.security import Security

from .errors import ClusterConnectError

_VALID_DAYS = 30


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for mutual TLS: the CA that signs, and one certificate/key used by every party."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Security:
        """A Dask ``Security`` requiring TLS, for the scheduler, workers and clients alike."""
        for path in (self.ca_file, self.cert, self.key):
            if not Path(path).is_file():
                raise ClusterConnectError(f"TLS file {path!r} does not exist: pass existing --tls-ca-file, "
                                          "--tls-cert and --tls-key files, or --tls alone for temporary ones.")
        return Security(
            tls_ca_file=self.ca_file,
            tls_scheduler_cert=self.cert, tls_scheduler_key=self.key,
            tls_worker_cert=self.cert, tls_worker_key=self.key,
            tls_client_cert=self.cert, tls_client_key=self.key,
            require_encryption=True,
        )


def make_tls_files(folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSFiles:
    """Write a fresh CA and a certificate it signs (valid for ``hosts``) into ``folder``; keys are 0600.

    Examples
    --------
    >>> import tempfile
    >>> files = make_tls_files(tempfile.mkdtemp())
    >>> open(files.cert).read().startswith("-----BEGIN CERTIFICATE-----")
    True
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-train temporary CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [_general_name(h) for h in dict.fromkeys(hosts)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-train")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TLSFiles(str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"))
    Path(files.ca_file).write_bytes(ca_cert.public_bytes(pem))
    Path(files.cert).write_bytes(cert.public_bytes(pem))
    _write_private(Path(files.key), key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return files


def _general_name(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_scheduler_file(path: str | Path, address: str, dashboard: str | None,
                         tls: TLSFiles | None = None) -> Path:
    """A Dask scheduler file (``Client(scheduler_file=...)`` and ``dask worker --scheduler-file`` read its
    ``address``) plus what dask-train needs: the dashboard URL and the TLS files, if any."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {"type": "Scheduler", "address": address, "dashboard": dashboard}
    if tls is not None:
        content["tls"] = asdict(tls)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)
    return path


def read_scheduler_file(path: str | Path) -> tuple[str, Security | None]:
    """The address and security settings in a scheduler file."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        address = content["address"]
    except FileNotFoundError:
        raise ClusterConnectError(f"Scheduler file {str(path)!r} does not exist. Start a cluster with "
                                  f"`dask-train cluster up --scheduler-file {path}` first.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ClusterConnectError(f"{str(path)!r} is not a scheduler file ({exc}).") from None
    tls = content.get("tls")
    return address, (TLSFiles(**tls).security() if tls else None)
