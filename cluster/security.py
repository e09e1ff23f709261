"""TLS for the scheduler, workers and clients: temporary certificates or the user's files, and the
scheduler file that tells another process how to connect (address plus certificate paths)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ClusterConnectError, ClusterError

if TYPE_CHECKING:
    from distributed.security import Security

_VALID_DAYS = 30


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for mutual TLS: the CA that signs, and one certificate/key used by every party."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Security:
        """A Dask ``Security`` requiring TLS, for the scheduler, workers and clients alike."""
        from distributed.security import Security

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
    """Write a fresh CA and a certificate it signs (valid for ``hosts``) into ``folder``, a new private
    directory (0700) created here; it must not exist. Every file is created exclusively; the key is 0600.
    :func:`remove_tls_files` removes exactly what this wrote.

    Raises
    ------
    ClusterError
        ``folder`` already exists (nothing in it is touched).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> files = make_tls_files(pathlib.Path(tempfile.mkdtemp()) / "tls")
    >>> open(files.cert).read().startswith("-----BEGIN CERTIFICATE-----")
    True
    >>> key = pathlib.Path(files.key)
    >>> oct(key.stat().st_mode & 0o777), oct(key.parent.stat().st_mode & 0o777)
    ('0o600', '0o700')
    >>> remove_tls_files(files)
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = _private_folder(Path(folder))
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
    _write_new(Path(files.ca_file), ca_cert.public_bytes(pem), 0o644)
    _write_new(Path(files.cert), cert.public_bytes(pem), 0o644)
    _write_new(Path(files.key), key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), 0o600)
    return files


def remove_tls_files(files: TLSFiles) -> None:
    """Remove the three files :func:`make_tls_files` wrote, then their folder if nothing else is in it."""
    for path in (files.ca_file, files.cert, files.key):
        Path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone put something there; leave it
        Path(files.key).parent.rmdir()


def _private_folder(folder: Path) -> Path:
    """Create ``folder`` (0700) exclusively: an existing one is refused, never reused or removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        raise ClusterError(f"{str(folder)!r} already exists: dask-train puts temporary TLS files only in a "
                           "folder it creates. Remove it if it is an old one, or choose another "
                           "--scheduler-file.") from None
    os.chmod(folder, 0o700)  # whatever the umask
    return folder


def _general_name(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never opening an existing file or following a link) and write it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
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


def check_scheduler_file_path(path: str | Path) -> None:
    """Refuse to write a scheduler file over anything but a scheduler file (a stale one, from a cluster that
    is gone): ``cluster up`` replaces it, then removes it on exit. Raises ValueError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--scheduler-file {str(path)!r} is a folder; name a file in it, e.g. "
                         f"{str(path / 'scheduler.json')!r}.")
    if not path.exists():
        return
    try:
        content = json.loads(path.read_text()) if path.stat().st_size < 1_000_000 else None
        if isinstance(content, dict) and (content.get("type") == "Scheduler" or "address" in content):
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise ValueError(f"--scheduler-file {str(path)!r} exists and is not a scheduler file: it would be replaced "
                     "and then removed. Name a new file.")


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
