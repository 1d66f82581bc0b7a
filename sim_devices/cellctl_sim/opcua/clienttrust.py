"""Strict client-certificate trust for the simulated server, as real servers do it.

asyncua's server accepts any client certificate on OpenSecureChannel. Plant servers
(and the UA reference stacks) refuse one they do not trust: they answer the
OpenSecureChannel request with a ServiceFault ``BadSecurityChecksFailed`` (a client
cannot tell *why* from it, on purpose), or with a transport-level error message (ERR),
close the connection, and park the certificate in their PKI's ``rejected/`` folder
until an administrator moves it to ``trusted/``.
This module reproduces exactly that, so the driver's handling of it is tested against
the real wire behaviour.

Uses asyncua internals (tested with 2.1.0): the protocol's ``processor`` and its
``open_secure_channel``, ``send_response`` and ``_connection.select_policy``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal, cast

from asyncua import ua as _ua
from asyncua.crypto.uacrypto import x509_from_der
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("cellctl_sim.opcua")

Refusal = Literal["service_fault", "error_message"]
REFUSALS: Final[tuple[Refusal, ...]] = ("service_fault", "error_message")
ua: Any = _ua  # asyncua's int-subclass annotations do not suit mypy; used untyped
# The first certificate of a DER chain (clients may send theirs with its issuers).
first_cert = cast(Callable[[bytes], x509.Certificate | None], x509_from_der)


class ClientTrust:
    """A trust list of client certificates: ``trusted/`` and ``rejected/`` under `root`.

    A client is trusted when its certificate (DER or PEM) is in ``trusted/``, compared
    exactly (no CA chains). The folder is read at every new secure channel, so trusting
    takes effect without a restart.
    """

    def __init__(self, root: Path, refusal: Refusal = "service_fault") -> None:
        self.root = root
        self.refusal = refusal

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"

    def ensure_dirs(self) -> None:
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def is_trusted(self, der: bytes) -> bool:
        for path in sorted(self.trusted_dir.glob("*")):
            try:
                data = path.read_bytes()
                cert = (
                    x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----") else first_cert(data)
                )
            except (OSError, ValueError):
                continue  # an unreadable file trusts nobody
            if cert is not None and cert.public_bytes(serialization.Encoding.DER) == der:
                return True
        return False

    def park(self, der: bytes) -> Path:
        """Save a refused certificate in ``rejected/`` under its SHA-1 thumbprint."""
        self.ensure_dirs()
        path = self.rejected_dir / f"{hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()}.der"
        path.write_bytes(der)
        return path


def guard_secure_channel(transport: Any, trust: ClientTrust) -> None:
    """Make the connection behind `transport` refuse a secure channel whose client
    certificate is not trusted: ServiceFault BadSecurityChecksFailed, then close."""
    processor = getattr(transport.get_protocol(), "processor", None)
    if processor is None:
        return
    original = processor.open_secure_channel

    def open_secure_channel(algohdr: Any, seqhdr: Any, body: Any) -> None:
        sent = algohdr.SenderCertificate
        if not sent or processor._connection.is_open():  # no security, or a renewal
            original(algohdr, seqhdr, body)
            return
        try:
            cert = first_cert(sent)
            der = cert.public_bytes(serialization.Encoding.DER) if cert is not None else bytes(sent)
        except ValueError:
            der = bytes(sent)  # unreadable: never in trusted/, refused below
        if trust.is_trusted(der):
            original(algohdr, seqhdr, body)
            return
        parked = trust.park(der)
        log.warning("refused an untrusted client certificate, saved to %s", parked)
        status = ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed)
        if trust.refusal == "error_message":
            transport.write(uatcp_to_binary(ua.MessageType.Error, ua.ErrorMessage(status, "untrusted certificate")))
            transport.close()
            return
        request = struct_from_binary(ua.OpenSecureChannelRequest, body)
        # The fault still travels in an asymmetric (OpenSecureChannel) message: pick the
        # policy so it can be signed and encrypted for the client, as a real server does.
        processor._connection.select_policy(algohdr.SecurityPolicyURI, sent, request.Parameters.SecurityMode)
        fault = ua.ServiceFault()
        fault.ResponseHeader.ServiceResult = status
        processor.send_response(request.RequestHeader.RequestHandle, seqhdr, fault, ua.MessageType.SecureOpen)
        transport.close()

    processor.open_secure_channel = open_secure_channel
