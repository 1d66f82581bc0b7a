"""The client's application certificate and its trust store, as plain files.

Layout of a PKI directory (what `cellctl cert` manages)::

    own/cert.der            our application instance certificate (DER)
    own/private/key.pem     its private key (PEM, mode 0600)
    trusted/*.der|*.pem     server certificates (or CAs) we trust
    rejected/*.der          server certificates we refused, waiting for a decision

The application URI is stored in the certificate (SubjectAltName URI). Regenerating the
certificate keeps it unless told otherwise, because servers trust a client by its
certificate *and* check that URI: a changing URI would break every trust relationship.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OWN_CERT = Path("own/cert.der")
OWN_KEY = Path("own/private/key.pem")
TRUSTED = Path("trusted")
REJECTED = Path("rejected")
Role = Literal["client", "server"]


class PkiError(Exception):
    """A PKI problem a user must fix (missing certificate, unreadable file); the message
    names the file and the command that helps."""


def default_application_uri(hostname: str | None = None) -> str:
    return f"urn:{hostname or socket.gethostname()}:cellctl"


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint, upper-case hex: what OPC UA tools (UaExpert, server GUIs) display."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def generate(
    uri: str,
    *,
    common: str,
    hostnames: list[str],
    role: Role = "client",
    days: int = 365 * 5,
    key_size: int = 2048,
) -> tuple[bytes, bytes]:
    """A self-signed OPC UA application instance certificate: (cert DER, key PEM).

    Part 6, 6.2.2: the application URI goes in SubjectAltName as a URI, host names as
    DNS names; key usage for signing and key/data encipherment; both client and server
    authentication, so one file works in either role.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cellctl")]
    )
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    alt += [x509.DNSName(h) for h in hostnames if h]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    if role == "server":
        usages.reverse()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,  # self-signed: it signs itself
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der_of(cert), key_pem


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "cert"


def file_name_for(cert: x509.Certificate) -> str:
    """``<common name>_<thumbprint>.der``: recognisable, unique, and no shell quoting needed."""
    return f"{_safe_name(common_name(cert))}_{thumbprint(der_of(cert))}.der"


@dataclass(frozen=True)
class Identity:
    """Our certificate, its key file and the application URI it carries."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate
    uri: str


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    reason: str
    rejected_path: Path | None = None


class TrustStore:
    """A PKI directory. Cheap to create; every check re-reads the folders, so a
    `cellctl cert trust` takes effect at the next connect without a restart."""

    def __init__(self, root: Path, *, certificate: Path | None = None, private_key: Path | None = None) -> None:
        self.root = root
        self.cert_path = certificate or root / OWN_CERT
        self.key_path = private_key or root / OWN_KEY

    @property
    def trusted_dir(self) -> Path:
        return self.root / TRUSTED

    @property
    def rejected_dir(self) -> Path:
        return self.root / REJECTED

    # -- our own identity ---------------------------------------------------------------

    def identity(self) -> Identity:
        """Our certificate and key; PkiError naming the command to create them."""
        if not self.cert_path.is_file() or not self.key_path.is_file():
            missing = self.cert_path if not self.cert_path.is_file() else self.key_path
            raise PkiError(
                f"no client certificate: {str(missing)!r} does not exist; create one with "
                f"`cellctl cert init --pki {self.root}`"
            )
        try:
            cert = load_cert(self.cert_path)
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read client certificate {str(self.cert_path)!r}: {exc}") from None
        uri = application_uri(cert)
        if uri is None:
            raise PkiError(
                f"client certificate {str(self.cert_path)!r} has no application URI (SubjectAltName URI); "
                f"OPC UA servers require one: create a new one with `cellctl cert init --pki {self.root} --force`"
            )
        return Identity(self.cert_path, self.key_path, cert, uri)

    def init(
        self,
        *,
        uri: str | None = None,
        hostname: str | None = None,
        days: int = 365 * 5,
        force: bool = False,
    ) -> tuple[Identity, bool]:
        """Create our certificate if missing (or `force`); returns (identity, created).

        With `force` the existing application URI is kept unless `uri` is given.
        """
        if self.cert_path.is_file() and self.key_path.is_file() and not force:
            return self.identity(), False
        if uri is None and self.cert_path.is_file():
            with contextlib.suppress(OSError, ValueError):
                uri = application_uri(load_cert(self.cert_path))
        host = hostname or socket.gethostname()
        uri = uri or default_application_uri(host)
        cert_der, key_pem = generate(uri, common=f"cellctl@{host}", hostnames=[host], days=days)
        _write_private(self.key_path, key_pem)
        self.cert_path.parent.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert_der)
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        return self.identity(), True

    # -- trust ----------------------------------------------------------------------------

    def _certs_in(self, folder: Path) -> list[tuple[Path, x509.Certificate]]:
        out: list[tuple[Path, x509.Certificate]] = []
        if not folder.is_dir():
            return out
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer") or not path.is_file():
                continue
            with contextlib.suppress(OSError, ValueError):
                out.append((path, load_cert(path)))
        return out

    def trusted(self) -> list[tuple[Path, x509.Certificate]]:
        return self._certs_in(self.trusted_dir)

    def rejected(self) -> list[tuple[Path, x509.Certificate]]:
        return self._certs_in(self.rejected_dir)

    def check(self, server_der: bytes, *, now: dt.datetime | None = None) -> Verdict:
        """Is this server certificate trusted? An untrusted one is copied to rejected/."""
        try:
            cert = x509.load_der_x509_certificate(server_der)
        except ValueError as exc:
            return Verdict(False, f"the server sent an unreadable certificate ({exc})")
        when = now or dt.datetime.now(dt.UTC)
        if when < cert.not_valid_before_utc or when > cert.not_valid_after_utc:
            return Verdict(
                False,
                f"server certificate {common_name(cert)!r} is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})",
            )
        wanted = der_of(cert)
        for _, candidate in self.trusted():
            if der_of(candidate) == wanted:
                return Verdict(True, "trusted")
        for _, candidate in self.trusted():
            if _issued_by(cert, candidate):
                return Verdict(True, f"issued by trusted CA {common_name(candidate)!r}")
        path = self.reject(cert)
        return Verdict(False, f"server certificate {common_name(cert)!r} is not trusted", path)

    def reject(self, cert: x509.Certificate) -> Path:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / file_name_for(cert)
        if not path.exists():
            path.write_bytes(der_of(cert))
        return path

    def trust(self, what: str) -> Path:
        """Trust a certificate: a file path, or a (prefix of a) thumbprint in rejected/.
        Moves it from rejected/ when it is there; returns its path in trusted/."""
        path = Path(what)
        if not path.is_file():
            wanted = what.replace(":", "").upper()
            matches = [
                p for p, c in self.rejected() if len(wanted) >= 6 and thumbprint(der_of(c)).startswith(wanted)
            ]
            if len(matches) != 1:
                found = "no" if not matches else f"{len(matches)}"
                raise PkiError(
                    f"{what!r} is neither a certificate file nor the thumbprint of exactly one certificate in "
                    f"{str(self.rejected_dir)!r} ({found} matches); `cellctl cert show --pki {self.root}` lists them"
                )
            path = matches[0]
        try:
            cert = load_cert(path)
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read certificate {str(path)!r}: {exc}") from None
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        target = self.trusted_dir / file_name_for(cert)
        target.write_bytes(der_of(cert))
        if path.parent.resolve() == self.rejected_dir.resolve():
            path.unlink()
        return target


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject or der_of(cert) == der_of(ca):
        return False
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
