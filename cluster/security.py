"""TLS for the scheduler, workers and clients: temporary certificates or the user's files, and the
scheduler file that tells another process how to connect (address plus certificate paths)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import socket
import stat
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

        self.check()
        return Security(
            tls_ca_file=self.ca_file,
            tls_scheduler_cert=self.cert, tls_scheduler_key=self.key,
            tls_worker_cert=self.cert, tls_worker_key=self.key,
            tls_client_cert=self.cert, tls_client_key=self.key,
            require_encryption=True,
        )


    def check(self) -> None:
        """Each file exists and is PEM (a certificate, or the key), read as data: ClusterConnectError naming the
        one that is not (ssl's own error names none)."""
        files = (("--tls-ca-file", self.ca_file, "CERTIFICATE"), ("--tls-cert", self.cert, "CERTIFICATE"),
                 ("--tls-key", self.key, "PRIVATE KEY"))
        for option, path, kind in files:
            if not Path(path).is_file():
                raise ClusterConnectError(f"TLS file {path!r} ({option}) does not exist: pass existing "
                                          "--tls-ca-file, --tls-cert and --tls-key files, or --tls alone for "
                                          "temporary ones.")
            try:
                with open(path, "rb") as handle:
                    head = handle.read(_PEM_BYTES)
            except OSError as exc:
                raise ClusterConnectError(f"TLS file {path!r} ({option}) cannot be read "
                                          f"({exc.strerror}).") from None
            if not re.search(rb"-----BEGIN [A-Z ]*" + kind.encode() + rb"-----", head):
                raise ClusterConnectError(f"TLS file {path!r} ({option}) holds no PEM {kind.lower()} "
                                          f"('-----BEGIN ...{kind}-----'): pass the PEM file your cluster's "
                                          "certificates came in, or --tls alone for temporary ones.")


#: A PEM certificate or key is a few kilobytes: its header is looked for in this much of the file.
_PEM_BYTES = 1_000_000


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


def _beside(scheduler_file: Path, tls_file: str) -> str:
    """A TLS file a scheduler file names: relative to the scheduler file's folder where it is there, else as
    written (relative to this folder: what `cluster up` wrote before it wrote absolute paths)."""
    there = scheduler_file.parent / tls_file
    return str(there) if there.exists() or Path(tls_file).is_absolute() else tls_file


def write_scheduler_file(path: str | Path, address: str, dashboard: str | None,
                         tls: TLSFiles | None = None) -> Path:
    """A Dask scheduler file (``Client(scheduler_file=...)`` and ``dask worker --scheduler-file`` read its
    ``address``) plus what dask-train needs: the dashboard URL and the TLS files, if any."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {"type": "Scheduler", "address": address, "dashboard": dashboard}
    if tls is not None:  # absolute: a client reads the file from any folder
        content["tls"] = {k: os.path.abspath(v) for k, v in asdict(tls).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)
    return path


def check_scheduler_file_path(path: str | Path) -> None:
    """Refuse to write a scheduler file over anything but a stale scheduler file (of a cluster that is gone:
    ``cluster up`` replaces it, then removes it on exit), over one of a cluster that still answers, or where
    its folder is missing or cannot be written. Raises ValueError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--scheduler-file {str(path)!r} is a folder; name a file in it, e.g. "
                         f"{str(path / 'scheduler.json')!r}.")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "does not exist" if not folder.is_dir() else "cannot be written here"
        raise ValueError(f"--scheduler-file {str(path)!r}: its folder {str(folder)!r} {why}. Name a file in a "
                         "folder you can write.")
    if not path.exists() and not path.is_symlink():
        return
    try:
        content = load_scheduler_file(path)
    except ValueError:
        raise ValueError(f"--scheduler-file {str(path)!r} exists and is not a scheduler file: it would be "
                         "replaced and then removed. Name a new file.") from None
    if _answers(content["address"]):
        raise ValueError(f"--scheduler-file {str(path)!r} is the file of a cluster that is running at "
                         f"{content['address']}: stop that cluster first (Ctrl-C where it runs), or name another "
                         "file for this one.")


def _answers(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at a tcp:// or tls:// ``address`` whose host is an IP address or
    localhost (the scheduler of a cluster that is still up; a host name is not looked up: that may hang)."""
    return _connect(address, timeout) == "accepted"


def refuses(address: str, timeout: float = 1.0) -> bool:
    """Whether ``address`` (as :func:`_answers` takes it) refuses connections: nothing listens there now."""
    return _connect(address, timeout) == "refused"


def _connect(address: str, timeout: float) -> str:
    """A TCP connection to ``address``: "accepted", "refused", or "unknown" (another error, a timeout, or a
    host that is not an IP address or localhost)."""
    scheme, _, rest = address.rpartition("://")
    host, _, port = (rest or address).rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" or scheme not in ("", "tcp", "tls"):
            return "unknown"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except (OSError, ValueError, UnicodeError):
        return "unknown"


def holds_address(path: str | Path, address: str) -> bool:
    """Whether the scheduler file at ``path`` is still the one of the scheduler at ``address`` (not replaced
    since by another cluster's)."""
    try:
        return load_scheduler_file(path)["address"] == address
    except ValueError:
        return False


#: A scheduler file is well under a kilobyte; one larger than this is not one.
MAX_SCHEDULER_FILE_BYTES = 1_000_000


def load_scheduler_file(path: str | Path) -> dict[str, Any]:
    """A scheduler file's contents, read as data: a regular file of at most
    :data:`MAX_SCHEDULER_FILE_BYTES`, a JSON mapping whose ``address`` is ``tcp://HOST:PORT`` (or tls://,
    ucx://) and whose ``tls``, if any, names three files. Raises ValueError naming the file and what to do."""
    from .target import check_address

    path = Path(path)
    shown = repr(str(path))
    written = "pass the file `dask-train cluster up --scheduler-file` (or `dask scheduler --scheduler-file`) wrote"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"Scheduler file {shown} does not exist. Start a cluster with `dask-train cluster up "
                         f"--scheduler-file {path}` first.") from None
    except OSError as exc:
        raise ValueError(f"Scheduler file {shown} cannot be read ({exc.strerror}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"Scheduler file {shown} is not a regular file: {written}.")
    if info.st_size > MAX_SCHEDULER_FILE_BYTES:
        raise ValueError(f"Scheduler file {shown} is {info.st_size:,} bytes, not a scheduler file (under a "
                         f"kilobyte): {written}.")
    try:
        with path.open("rb") as handle:
            content = json.loads(handle.read(MAX_SCHEDULER_FILE_BYTES + 1))
    except OSError as exc:
        raise ValueError(f"Scheduler file {shown} cannot be read ({exc.strerror}).") from None
    except (ValueError, RecursionError):
        raise ValueError(f"Scheduler file {shown} is not JSON: {written}.") from None
    if not isinstance(content, dict) or not isinstance(content.get("address"), str):
        raise ValueError(f"{shown} is not a scheduler file (no \"address\" text in it): {written}.")
    try:
        check_address(content["address"])
    except ValueError as exc:
        raise ValueError(f"Scheduler file {shown}: {exc}") from None
    tls = content.get("tls")
    fields = {"ca_file", "cert", "key"}
    if tls is not None and not (isinstance(tls, dict) and set(tls) == fields
                                and all(isinstance(v, str) for v in tls.values())):
        raise ValueError(f"Scheduler file {shown}: its \"tls\" is not the three file paths (ca_file, cert, key) "
                         f"dask-train writes: {written}.")
    return content


def read_scheduler_file(path: str | Path) -> tuple[str, Security | None]:
    """The address and security settings in a scheduler file (checked as :func:`load_scheduler_file` says:
    ClusterConnectError otherwise)."""
    try:
        content = load_scheduler_file(path)
    except ValueError as exc:
        raise ClusterConnectError(str(exc)) from None
    tls = content.get("tls")
    if tls:  # a relative path is the file's folder's, else as written (an older `cluster up` wrote its own's)
        tls = {k: _beside(Path(path), v) for k, v in tls.items()}
    return content["address"], (TLSFiles(**tls).security() if tls else None)
