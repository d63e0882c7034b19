"""TLS contexts: server side with certificates chosen by SNI, client side for https backends."""

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadweaver.config.models import Certificate, ListenerTls, UpstreamTls

ALPN = ["http/1.1"]


class TlsConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """The contexts of one listener: the first certificate is the default for unknown names."""

    default: ssl.SSLContext
    by_name: dict[str, ssl.SSLContext]

    def for_server_name(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        name = server_name.lower()
        exact = self.by_name.get(name)
        if exact is not None:
            return exact
        _, _, parent = name.partition(".")
        return self.by_name.get(f"*.{parent}", self.default)


def load_certificate_set(tls: ListenerTls) -> CertificateSet:
    contexts = [(_server_context(cert, tls.min_version), cert) for cert in tls.certificates]
    by_name: dict[str, ssl.SSLContext] = {}
    for context, cert in contexts:
        for name in _certificate_names(cert.cert_file):
            by_name.setdefault(name.lower(), context)
    return CertificateSet(contexts[0][0], by_name)


def listener_context(select: "SniSelector", min_version: str) -> ssl.SSLContext:
    """The context a listener binds with; its SNI callback swaps in the current certificates."""
    context = _base_server_context(min_version)
    context.sni_callback = select.callback
    return context


class SniSelector:
    """Looks up the certificate set at handshake time, so a reload changes certificates live."""

    def __init__(self, certificates: CertificateSet) -> None:
        self.certificates = certificates

    def callback(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self.certificates.for_server_name(server_name)


def upstream_context(tls: UpstreamTls) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(f"cannot load ca_file {tls.ca_file!r}: {error}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(ALPN)
    return context


def _base_server_context(min_version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.set_alpn_protocols(ALPN)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _server_context(cert: Certificate, min_version: str) -> ssl.SSLContext:
    context = _base_server_context(min_version)
    try:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    except FileNotFoundError:
        # load_cert_chain does not say which of the two files is missing.
        missing = next(
            (name for name in (cert.cert_file, cert.key_file) if not Path(name).is_file()),
            cert.cert_file,
        )
        raise TlsConfigError(f"certificate file not found: {missing}") from None
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot load certificate {cert.cert_file!r} with key {cert.key_file!r}: {error}"
        ) from None
    return context


def _certificate_names(cert_file: str) -> Sequence[str]:
    """DNS names from the certificate's subjectAltName, falling back to its common name."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(Path(cert_file)))  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, AttributeError):
        return ()
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [value for key, value in rdn if key == "commonName"]
    return names
