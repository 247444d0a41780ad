"""
Shared by the client tests: small fake servers that answer wrongly in one
particular way each, a mixin that listens on an ephemeral loopback port and
runs the load client against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory

from tcpdemo.client.load import LoadConfig, LoadRun
from tcpdemo.client.stats import Report
from tcpdemo.frame import FrameReceiver, frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.packet import SubmitAck, encode
from tcpdemo.protocol import TcpDemoServerFactory

from .support import ackFrame

LOCALHOST = "127.0.0.1"
#: The global reactor, typed loosely: its interfaces are many, and not declared.
reactor: Any = _reactor


class FakeServer(FrameReceiver):
    """
    Answers each Submit with C{answer(n, id)}; subclasses break one thing.
    """

    factory: FakeFactory
    transport: Any

    def connectionMade(self) -> None:
        self.received = 0
        self.factory.open.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.open.discard(self)

    def stringReceived(self, payload: bytes) -> None:
        self.received += 1
        data = self.answer(self.received, payload[1:9])
        if data:
            self.transport.write(data)

    def answer(self, n: int, id: bytes) -> bytes:
        return ackFrame(id)


class FakeFactory(ServerFactory):
    noisy = False

    def __init__(self, server: type[FakeServer]) -> None:
        self.server = server
        self.open: set[FakeServer] = set()
        self.closedOne = False
        self.calls: list[Any] = []
        self.connAckResult = 0

    def stopFactory(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.server()
        protocol.factory = self
        return protocol


class WrongId(FakeServer):
    """
    Acks id 6 where 5 is owed.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ackFrame(n + 1) if n == 5 else ackFrame(n)


class WrongCommand(FakeServer):
    """
    Answers the third Submit with command byte 0x82.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        data = ackFrame(n)
        return data[:4] + b"\x82" + data[5:] if n == 3 else data


class WrongResult(FakeServer):
    """
    Answers the fourth Submit with result 1.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ackFrame(n, result=1 if n == 4 else 0)


class Truncated(FakeServer):
    """
    Sends 7 bytes of the fifth ack, then closes.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 5:
            self.transport.write(ackFrame(n)[:7])
            self.transport.loseConnection()
            return b""
        return ackFrame(n)


class ClosesEarly(FakeServer):
    """
    Closes each connection after its tenth ack.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 10:
            self.transport.loseConnection()
        return ackFrame(n)


class ClosesFirstConnection(FakeServer):
    """
    Closes the first connection it accepted after 10 acks; serves the others.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 10 and not self.factory.closedOne:
            self.factory.closedOne = True
            self.transport.loseConnection()
        return ackFrame(n)


class SlowButSteady(FakeServer):
    """
    Answers one Submit every 50 ms: slow, never silent for long.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        self.factory.calls.append(reactor.callLater(0.05 * n, self.transport.write, ackFrame(n)))
        return b""


class AnswersTwice(FakeServer):
    """
    Acks every Submit twice, in one write.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ackFrame(n) + ackFrame(n)


class Forgets(FakeServer):
    """
    Never answers after the sixth Submit, and stays connected.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ackFrame(n) if n <= 6 else b""


class BadLengthServer(FakeServer):
    """
    Answers the second Submit with a 15-byte frame.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return frame(encode(SubmitAck(id)) + b"!") if n == 2 else ackFrame(n)


class LoadTestsMixin:
    """
    Listen on an ephemeral loopback port; run the client against it.
    """

    addCleanup: Callable[..., None]

    def listen(self, factory: Any) -> str:
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.serverClosed, factory)
        return f"tcp:{LOCALHOST}:{cast(IPv4Address, port.getHost()).port}"

    def serverClosed(self, factory: Any) -> defer.Deferred[None]:
        """
        Wait (briefly) for the server side of every connection to close, so
        that no socket outlives the test.
        """
        conns = getattr(factory, "connections", None)
        if conns is None:
            conns = factory.open

        def poll(tries: int) -> Any:
            if not conns or tries == 0:
                for p in list(conns):
                    p.transport.abortConnection()
                return task.deferLater(reactor, 0.01, lambda: None)
            return task.deferLater(reactor, 0.01, poll, tries - 1)

        closed: defer.Deferred[None] = poll(200)
        return closed

    def realServer(self, **kwargs: Any) -> str:
        return self.listen(TcpDemoServerFactory(metrics=ServerMetrics.create(), **kwargs))

    def load(self, endpoint: str, **kwargs: Any) -> defer.Deferred[Report]:
        kwargs.setdefault("connections", 1)
        kwargs.setdefault("drainTimeout", 2.0)
        run: defer.Deferred[Report] = LoadRun(reactor, LoadConfig(endpoint, **kwargs)).run()
        return run


class ConnAckThenAcks(FakeServer):
    """
    Answers a Conn with the factory's C{connAckResult} (and closes after a
    non-zero one, as the real server), Submits with acks.
    """

    def stringReceived(self, payload: bytes) -> None:
        if payload[:1] == b"\x01":
            result = self.factory.connAckResult
            self.transport.write(frame(bytes((0x80, result))))
            if result:
                self.transport.loseConnection()
            return
        super().stringReceived(payload)


def writeTLSFiles(directory: str, hostIP: str = LOCALHOST) -> dict[str, str]:
    """
    A throwaway CA and a server certificate it signed, for C{hostIP} (as an
    IP address subject alternative name) and the DNS name C{tcpdemo.test},
    written as PEM files in C{directory}: C{ca} (the CA certificate),
    C{cert} and C{key} (the server's), and C{otherCA} (a CA that signed
    nothing here).  Returns their paths by those names.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    caCert, caKey = ca("tcpdemo test CA")
    otherCert, _ = ca("tcpdemo other CA")
    serverKey = ec.generate_private_key(ec.SECP256R1())
    serverCert = (
        x509.CertificateBuilder()
        .subject_name(name("tcpdemo.test"))
        .issuer_name(caCert.subject)
        .public_key(serverKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("tcpdemo.test"), x509.IPAddress(ipaddress.ip_address(hostIP))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": caCert.public_bytes(pem),
        "otherCA": otherCert.public_bytes(pem),
        "cert": serverCert.public_bytes(pem),
        "key": serverKey.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    paths = {}
    for label, data in files.items():
        path = os.path.abspath(os.path.join(directory, f"{label}.pem"))
        with open(path, "wb") as f:
            f.write(data)
        paths[label] = path
    return paths
