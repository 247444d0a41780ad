"""
Client endpoints from endpoint strings, with TLS that verifies by default.

Any Twisted client endpoint string works (C{tcp:}, C{unix:}, C{ssl:},
C{tls:}, and those of plugins).  Twisted's own C{ssl:} client accepts any
certificate unless it is given C{hostname=} (and C{caCertsDir=} alone
checks the chain but not the name), so C{ssl:} and C{tls:} descriptions
are built here instead, in the manner of treq: C{optionsForClientTLS} with
the host name and, unless told otherwise, the platform's trust roots
(C{platformTrust}).  Verification is turned off only on request.
"""

from __future__ import annotations

import os
import re
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint

from tcpdemo.endpoints import Description, parseDescription

#: A trust root: a path (str or os.PathLike) to a PEM file of CA certificates
#: or to a directory of C{*.pem} files, a Twisted L{ssl.Certificate}, or any
#: trust root Twisted takes (from L{ssl.platformTrust}, say; the interface,
#: C{IOpenSSLTrustRoot}, is not public, hence C{Any}).
TrustRoot = Any

TLS_KINDS = frozenset(("ssl", "tls"))

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class EndpointError(ValueError):
    """
    An endpoint string (or a trust root) that cannot be used, with a
    message fit for one line of output.
    """


def loadTrustRoot(trust: TrustRoot) -> Any:
    """
    A trust root from a PEM file (one or more CA certificates), a directory
    of C{*.pem} files, a certificate, or a trust root as it is.

    @raise EndpointError: the path cannot be read or holds no certificate.
    """
    if isinstance(trust, ssl.Certificate):
        return ssl.trustRootFromCertificates([trust])
    if not isinstance(trust, (str, os.PathLike)):
        return trust
    path = os.fspath(trust)
    try:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(".pem"))
            data = b"".join(_read(os.path.join(path, n)) for n in names)
        else:
            data = _read(path)
    except OSError as e:
        raise EndpointError(f"cannot read CA certificates from {path}: {e.strerror}") from e
    pems = _PEM_CERTIFICATE.findall(data)
    if not pems:
        raise EndpointError(f"no PEM certificate found in {path}")
    try:
        certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    except Exception as e:  # OpenSSL.crypto.Error, with no useful type of its own
        raise EndpointError(f"bad CA certificate in {path}: {e}") from e
    return ssl.trustRootFromCertificates(certificates)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _clientCertificate(certificate: str | None, privateKey: str | None) -> Any:
    if certificate is None:
        return None
    try:
        pem = _read(certificate)
        if privateKey is None:
            return ssl.PrivateCertificate.loadPEM(pem)
        return ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate.loadPEM(pem), ssl.KeyPair.load(_read(privateKey), FILETYPE_PEM)
        )
    except OSError as e:
        raise EndpointError(f"cannot read the client certificate: {e}") from e


def _tlsEndpoint(
    reactor: Any,
    description: Description,
    verify: bool,
    trustRoot: TrustRoot | None,
) -> IStreamClientEndpoint:
    """
    C{ssl:host:port[:caCertsDir=DIR][:hostname=NAME][:certKey=..][:privateKey=..]
    [:timeout=S][:bindAddress=H]} or Twisted's C{tls:host:port[:trustRoots=DIR]
    [:certificate=..][:privateKey=..][:timeout=S][:bindAddress=H]}.
    """
    kw = dict(description.kwargs)
    args = list(description.args)
    host = kw.pop("host", None) or (args.pop(0) if args else None)
    port = kw.pop("port", None) or (args.pop(0) if args else None)
    if host is None or port is None or args:
        raise EndpointError(
            f"{description.kind}: needs a host and a port, as {description.kind}:HOST:PORT"
        )
    try:
        portNumber = int(port)
        timeout = float(kw.pop("timeout", "30"))
    except ValueError as e:
        raise EndpointError(f"{description.kind}: {e}") from e
    bind = kw.pop("bindAddress", None)
    bindAddress = (bind, 0) if bind else None
    if description.kind == "ssl":
        caDir = kw.pop("caCertsDir", None)
        hostname = kw.pop("hostname", None) or host
        certificate = kw.pop("certKey", None)
        kw.pop("method", None)  # obsolete in Twisted: TLS versions are negotiated
    else:
        caDir = kw.pop("trustRoots", None)
        hostname = host
        certificate = kw.pop("certificate", None)
    privateKey = kw.pop("privateKey", None)
    if kw:
        raise EndpointError(f"{description.kind}: unknown option(s) {', '.join(sorted(kw))}")
    client = _clientCertificate(certificate, privateKey)
    options: Any
    if verify:
        root = (
            loadTrustRoot(trustRoot if trustRoot is not None else caDir)
            if (trustRoot is not None or caDir is not None)
            else None
        )
        options = ssl.optionsForClientTLS(hostname, trustRoot=root, clientCertificate=client)
    else:
        # Encrypted, but anyone in the middle can present any certificate.
        options = ssl.CertificateOptions(
            certificate=None if client is None else client.original,
            privateKey=None if client is None else client.privateKey.original,
        )
    inner = HostnameEndpoint(reactor, host, portNumber, timeout, bindAddress)
    return wrapClientTLS(options, inner)


def clientEndpoint(
    reactor: Any,
    description: str,
    *,
    tlsVerify: bool = True,
    trustRoot: TrustRoot | None = None,
) -> IStreamClientEndpoint:
    """
    The client endpoint an endpoint string describes.

    For C{ssl:} and C{tls:} the server's certificate is verified, host name
    included, against C{trustRoot} if given, else the description's
    C{caCertsDir=} (C{ssl:}) or C{trustRoots=} (C{tls:}), else the
    platform's trust roots; C{tlsVerify=False} turns that off.

    @raise EndpointError: the description or the trust root is unusable.
    """
    try:
        parsed = parseDescription(description)
    except ValueError as e:
        raise EndpointError(str(e)) from e
    if parsed.kind in TLS_KINDS:
        return _tlsEndpoint(reactor, parsed, tlsVerify, trustRoot)
    if ":" not in description:
        raise EndpointError(f"not an endpoint string: {description!r} (try tcp:HOST:PORT)")
    try:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
        return endpoint
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise EndpointError(f"bad endpoint {description!r}: {e}") from e


def isTLS(description: str) -> bool:
    """
    Whether the endpoint string is one of the TLS kinds built here.
    """
    try:
        return parseDescription(description).kind in TLS_KINDS
    except ValueError:
        return False  # not an endpoint string at all: clientEndpoint says so
