"""
Security features of a real C{twistd -n tcpdemo}, over loopback:

  - the debug (profiling) endpoints are off by default, refused unless
    bound to loopback, and served there when asked for;
  - TLS through an C{ssl:} endpoint, with a throwaway self-signed
    certificate made in the test;
  - the optional shared secret of C{--auth-token-file}: Conn with the token
    before any Submit; a wrong or missing token closes the connection; the
    reference client's way (no Conn) works without the option.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .reliability import (
    REASONS,
    HostileMixin,
    Plan,
    ServerTestCase,
    errorCounts,
    listeningAddresses,
    report,
)
from .support import (
    LOOPBACK,
    ackFrame,
    connAckFrame,
    freePort,
    lengthField,
    metric,
    rawFrame,
    recvExactly,
    recvUntilClosed,
    submitFrame,
    subprocessEnv,
    twistdCommand,
    waitFor,
)

#: The test vectors of docs/protocol.md.
HELLO = bytes.fromhex("00000012023030303030303031") + b"hello"
HELLO_ACK = bytes.fromhex("0000000e81303030303030303100")
EMPTY = bytes.fromhex("0000000d023030303030303032")
EMPTY_ACK = bytes.fromhex("0000000e81303030303030303200")
TWO = bytes.fromhex("0000000e023030303030303033610000000f0230303030303030346262")
TWO_ACKS = bytes.fromhex("0000000e813030303030303033000000000e81303030303030303400")
VECTORS = HELLO + EMPTY + TWO
VECTOR_ACKS = HELLO_ACK + EMPTY_ACK + TWO_ACKS

AUTH_EXAMPLES = int(os.environ.get("TCPDEMO_HOSTILE_EXAMPLES", "15"))


def runClient(*args: str) -> dict[str, object]:
    """
    Run the load client to completion; its JSON summary.
    """
    done = subprocess.run(
        [sys.executable, "-m", "tcpdemo.client", "--json", "--quiet", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=subprocessEnv(),
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"tcpdemo.client exited {done.returncode}: {done.stdout!r} {done.stderr!r}"
        )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def runClientCleanly(test: SynchronousTestCase, *args: str) -> dict[str, object]:
    """
    Run the load client with C{args} on 8 connections for 20 000 Submits;
    assert that every ack came and nothing counted as an error; its summary.
    """
    summary = runClient(*args, "--connections", "8", "--count", "20000")
    test.assertEqual(summary["acked"], 20000)
    errors = summary["errors"]
    assert isinstance(errors, dict)
    test.assertEqual(errors["total"], 0)
    return summary


# Debug endpoints


class DebugEndpointTests(ServerTestCase):
    def test_offByDefault(self) -> None:
        """
        Without --debug, the server listens on its two endpoints only, and
        logs no debug listener.
        """
        server = self.startServer()
        self.assertEqual(
            listeningAddresses(server.pid),
            {(LOOPBACK, server.port), (LOOPBACK, server.metricsPort)},
        )
        self.assertNotIn("debug", server.log().lower())

    def runTwistd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """
        Run C{twistd -n tcpdemo ARGS} to completion (it must not start).
        """
        workdir = self.workdir()
        return subprocess.run(
            twistdCommand()
            + [
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(workdir, "twistd.log"),
                "tcpdemo",
                "--port",
                f"tcp:0:interface={LOOPBACK}",
                "--metrics",
                "none",
                *args,
            ],
            cwd=workdir,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )

    def test_refusedUnlessLoopback(self) -> None:
        """
        --debug on every interface, or on an address that is not loopback,
        stops twistd before it listens on anything, saying why.
        """
        for description in (
            f"tcp:{freePort()}",
            f"tcp:{freePort()}:interface=0.0.0.0",
            f"tcp6:{freePort()}:interface=\\:\\:",
            f"tcp:{freePort()}:interface=192.0.2.1",
        ):
            done = self.runTwistd("--debug", description)
            output = (done.stdout + done.stderr).decode(errors="replace")
            self.assertIn("--debug", output, description)
            self.assertIn("loopback", output, description)
            self.assertNotIn("listening on", output, description)

    def test_refusalIsAUsageError(self) -> None:
        """
        ... reported as a usage error, with twistd's exit status for one:
        non-zero, so that a supervisor sees the failure, wherever twistd
        reports usage errors so (twistd of Twisted before 26.10, the newest
        for Python 3.9, exits 0 after printing any usage error, so the
        plugin reports its own and exits 2: see tcpdemo.startup).
        """
        ordinary = self.runTwistd("--no-such-option")
        done = self.runTwistd("--debug", f"tcp:{freePort()}")
        output = (done.stdout + done.stderr).decode(errors="replace")
        self.assertIn("--debug", output)
        self.assertIn("loopback", output)
        self.assertEqual(done.returncode, ordinary.returncode)
        # Non-zero on every Twisted: the plugin exits itself (status 2).
        self.assertEqual(done.returncode, 2)

    def test_servedOnLoopback(self) -> None:
        """
        --debug tcp:PORT:interface=127.0.0.1 serves /debug/ there, and every
        listener of the process is on loopback.
        """
        server = self.startServer("--debug", f"tcp:0:interface={LOOPBACK}")
        port = server.listeningPort(r"tcpdemo debug \(/debug/\) listening on")
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/debug/", timeout=10) as response:
            self.assertEqual(response.status, 200)
            self.assertIn(b"/debug/profile", response.read())
        listening = listeningAddresses(server.pid)
        self.assertIn((LOOPBACK, port), listening)
        self.assertEqual({host for host, _ in listening}, {LOOPBACK})
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/debug/profile?seconds=-1", timeout=10)
        self.assertEqual(caught.exception.code, 400)
        self.assertHealthy(server)


# TLS


def makeCertificate(directory: str) -> tuple[str, str]:
    """
    A throwaway self-signed certificate for 127.0.0.1 (and localhost): the
    path of a PEM file with the key and the certificate, and of one with
    the certificate alone (to trust).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpdemo test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPem = certificate.public_bytes(serialization.Encoding.PEM)
    keyPem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    both = os.path.join(directory, "server.pem")
    with open(both, "wb") as f:
        f.write(keyPem + certPem)
    trust = os.path.join(directory, "ca")
    os.makedirs(trust)
    certOnly = os.path.join(trust, "server-cert.pem")
    with open(certOnly, "wb") as f:
        f.write(certPem)
    return both, certOnly


class TLSTests(ServerTestCase):
    def startTLS(self) -> tuple[int, str]:
        directory = self.workdir()
        pem, cert = makeCertificate(directory)
        self.server = self.startServer(
            "--port", f"ssl:0:interface={LOOPBACK}:privateKey={pem}:certKey={pem}"
        )
        return self.server.port, cert

    def tlsConnect(self, port: int, cert: str) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=cert)
        raw = socket.create_connection((LOOPBACK, port), timeout=10)
        return context.wrap_socket(raw, server_hostname=LOOPBACK)

    def test_tls(self) -> None:
        """
        Over TLS, verified against the throwaway certificate: the vectors
        and 1000 pipelined Submits get their acks; bad input closes the
        connection with the acks owed; plaintext gets nothing back.
        """
        port, cert = self.startTLS()
        server = self.server
        sock = self.tlsConnect(port, cert)
        self.assertIsNotNone(sock.version())
        sock.sendall(VECTORS)
        self.assertEqual(recvExactly(sock, len(VECTOR_ACKS)), VECTOR_ACKS)
        sock.sendall(b"".join(submitFrame(i, b"tls") for i in range(1000)))
        self.assertEqual(recvExactly(sock, 14 * 1000), b"".join(ackFrame(i) for i in range(1000)))

        bad = self.tlsConnect(port, cert)
        bad.sendall(submitFrame(7) + lengthField(3))
        self.assertEqual(recvUntilClosed(bad), ackFrame(7))
        bad.close()

        plain = socket.create_connection((LOOPBACK, port), timeout=10)
        plain.sendall(VECTORS)
        self.assertNotIn(HELLO_ACK, recvUntilClosed(plain))
        plain.close()

        sock.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_rsp_send_total"), 4 + 1000 + 1)
        self.assertEqual(errorCounts(samples)["bad_length"], 1)
        self.assertHealthy(server)

    def test_tlsCloseWhilePeerSends(self) -> None:
        """
        Bad input over TLS while the client goes on sending: the acks owed
        arrive, the connection closes, and the server logs no error.  (The
        close must go through the TLS layer -- close_notify, then TCP --
        not shut the TCP connection down underneath it.)
        """
        port, cert = self.startTLS()
        server = self.server
        owed = b"".join(ackFrame(i) for i in range(500))
        for attempt in range(5):
            sock = self.tlsConnect(port, cert)
            sock.sendall(b"".join(submitFrame(i, b"x" * 20) for i in range(500)) + lengthField(3))
            try:
                for _ in range(5):
                    sock.sendall(b"still sending" * 100)
            except OSError:
                pass
            self.assertEqual(recvUntilClosed(sock), owed, f"attempt {attempt}")
            sock.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        self.assertEqual(errorCounts(server.scrape())["bad_length"], 5)
        self.assertHealthy(server)

    def test_loadClientOverTLS(self) -> None:
        """
        The load client through a Twisted C{ssl:} client endpoint that
        trusts the throwaway certificate: no errors, every ack.
        """
        port, cert = self.startTLS()
        summary = runClientCleanly(
            self,
            "--port",
            f"ssl:host={LOOPBACK}:port={port}:caCertsDir={os.path.dirname(cert)}",
        )
        report("load client over TLS", acks=summary["acked"])


# The shared secret


TOKEN = b"s3cret-Token_for-tests"

_submits = st.builds(
    lambda number, payload: submitFrame(number, payload),
    st.integers(0, 10**8 - 1),
    st.binary(max_size=30),
)
_authItems = st.one_of(
    _submits,
    _submits,
    st.just(rawFrame(0x01, TOKEN)),
    st.just(rawFrame(0x01, TOKEN)),
    st.just(rawFrame(0x01, b"")),
    st.binary(max_size=40).map(lambda token: rawFrame(0x01, token)),
    st.just(rawFrame(0x01, TOKEN + b"\n")),
    st.just(rawFrame(0x01, TOKEN[:-1])),
)


@st.composite
def authPlans(draw: st.DrawFn) -> Plan:
    stream = b"".join(draw(st.lists(_authItems, max_size=8)))
    splits = draw(st.one_of(st.just([]), st.lists(st.integers(1, 16), min_size=1, max_size=4)))
    return stream, splits, "halfclose"


class AuthTests(HostileMixin):
    def startAuth(self) -> None:
        path = os.path.join(self.workdir(), "token")
        with open(path, "wb") as f:
            f.write(b"  " + TOKEN + b"\n")
        os.chmod(path, 0o600)
        self.server = self.startServer("--auth-token-file", path)
        self.tokenPath = path

    def test_tokenRequired(self) -> None:
        """
        With --auth-token-file: the vectors without a Conn are refused with
        no ack (unexpected_command); a wrong token, an empty one or none
        gets ConnAck 1 and a close (auth_failed); the right token gets
        ConnAck 0 and then every ack.
        """
        self.startAuth()
        server = self.server
        before = errorCounts(server.scrape())

        noConn = server.connect()
        noConn.sendall(VECTORS)
        self.assertEqual(recvUntilClosed(noConn), b"")
        noConn.close()

        for wrong in (b"wrong", b"", TOKEN + b"x", TOKEN.upper()):
            sock = server.connect()
            sock.sendall(rawFrame(0x01, wrong) + VECTORS)
            self.assertEqual(recvUntilClosed(sock), connAckFrame(1), wrong)
            sock.close()

        good = server.connect()
        good.sendall(rawFrame(0x01, TOKEN) + VECTORS)
        self.assertEqual(recvExactly(good, 6 + len(VECTOR_ACKS)), connAckFrame(0) + VECTOR_ACKS)
        good.sendall(b"".join(submitFrame(i) for i in range(100)))
        self.assertEqual(recvExactly(good, 1400), b"".join(ackFrame(i) for i in range(100)))
        good.close()

        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        after = errorCounts(server.scrape())
        delta = {reason: after[reason] - before[reason] for reason in REASONS}
        self.assertEqual(delta["unexpected_command"], 1)
        self.assertEqual(delta["auth_failed"], 4)
        self.assertEqual(sum(delta.values()), 5)
        self.assertNotIn(TOKEN.decode(), server.log(), "the token must not be logged")
        self.assertHealthy(server)

    @settings(
        max_examples=AUTH_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plans=st.lists(authPlans(), min_size=1, max_size=3))
    def _authStreams(self, plans: list[Plan]) -> None:
        self.exchangePlans(self.server, plans, maxFrameLength=1 << 20, token=TOKEN)

    def test_authStreams(self) -> None:
        """
        Hypothesis-drawn mixes of Conns (right, wrong, empty, near-miss
        tokens) and Submits, split anywhere, on 1-3 connections at a time:
        each gets what the model owes it and the counters agree.
        """
        self.startAuth()
        self._authStreams()
        self.assertHealthy(self.server)

    def test_loadClientWithToken(self) -> None:
        """
        The load client with --token-file: every connection authenticates
        and gets every ack.
        """
        self.startAuth()
        runClientCleanly(
            self,
            "--port",
            f"tcp:{LOOPBACK}:{self.server.port}",
            "--token-file",
            self.tokenPath,
        )
        self.assertEqual(errorCounts(self.server.scrape())["auth_failed"], 0)

    def test_noOptionNoConn(self) -> None:
        """
        Without --auth-token-file, the reference client's way -- Submits
        with no Conn -- works, and so does a Conn with any body.
        """
        server = self.startServer()
        sock = server.connect()
        sock.sendall(VECTORS)
        self.assertEqual(recvExactly(sock, len(VECTOR_ACKS)), VECTOR_ACKS)
        sock.sendall(rawFrame(0x01, b"anything") + HELLO)
        self.assertEqual(recvExactly(sock, 6 + 14), connAckFrame(0) + HELLO_ACK)
        sock.close()
        self.assertEqual(errorCounts(server.scrape()), {reason: 0 for reason in REASONS})
