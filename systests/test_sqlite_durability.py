"""
Durability of C{--handler sqlite:PATH} under SIGKILL: every Submit a client
saw acked with result 0 is in the store, and still there after a restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import TestCase

from tcpdemo.frame import frame
from tcpdemo.packet import Submit, encode
from tests.support import TwistdServer, ackFrame, recvExactly, submitFrame, subprocessEnv

CLIENTS = 4
#: Acks with result 0 seen (summed over the clients) before the kill.
BEFORE_KILL = 20000


def dumpIds(path: str) -> list[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "tcpdemo.dump", f"sqlite:{path}"],
        env=subprocessEnv(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [bytes.fromhex(json.loads(line)["id"]) for line in result.stdout.splitlines()]


class PipeliningClient:
    """
    Sends Submits with ids C{<client><7 digits>} as fast as the server takes
    them, and records each id acked with result 0, checking ack order.
    """

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.acked: list[bytes] = []
        self.problems: list[str] = []
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [
            threading.Thread(target=self.send, daemon=True),
            threading.Thread(target=self.receive, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def ident(self, index: int) -> bytes:
        return b"%d%07d" % (self.number, index)

    def send(self) -> None:
        try:
            while not self.stop.is_set():
                chunk = b"".join(
                    frame(encode(Submit(self.ident(self.sent + i), b"payload %d" % i)))
                    for i in range(500)
                )
                self.sock.sendall(chunk)
                self.sent += 500
        except OSError:
            pass

    def receive(self) -> None:
        expected = 0
        buffered = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buffered += data
                whole = len(buffered) - len(buffered) % 14
                for offset in range(0, whole, 14):
                    ack = buffered[offset : offset + 14]
                    ident = self.ident(expected)
                    expected += 1
                    if ack[5:13] != ident:
                        self.problems.append(f"ack {ack!r} out of order, wanted {ident!r}")
                        return
                    if ack[13] == 0:
                        self.acked.append(ident)
                    else:
                        self.problems.append(f"ack {ack!r}: result {ack[13]}")
                buffered = buffered[whole:]
        except OSError:
            pass


class SqliteDurabilityTests(TestCase):
    def test_sigkillLosesNoAckedSubmit(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "store.db")
        server = TwistdServer(workdir, ["--handler", f"sqlite:{path}"])
        self.addCleanup(server.kill)
        clients = [PipeliningClient(server.connect(), number) for number in range(1, CLIENTS + 1)]
        deadline = time.monotonic() + 120
        while sum(len(c.acked) for c in clients) < BEFORE_KILL:
            self.assertLess(time.monotonic(), deadline, "the server acked too little")
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(30)
        for client in clients:
            client.stop.set()
            for thread in client.threads:
                thread.join(30)
            client.sock.close()
        acked = [ident for client in clients for ident in client.acked]
        sent = sum(client.sent for client in clients)
        for client in clients:
            self.assertEqual(client.problems, [])
        self.assertGreaterEqual(len(acked), BEFORE_KILL)
        self.assertLess(len(acked), sent, "the kill came after every Submit was acked")

        stored = dumpIds(path)
        missing = set(acked) - set(stored)
        self.assertEqual(missing, set(), f"{len(missing)} of {len(acked)} acked Submits lost")
        # Stored means committed: each client's rows are in its send order.
        for client in clients:
            mine = [i for i in stored if i[:1] == b"%d" % client.number]
            self.assertEqual(mine, sorted(mine))

        rerun = os.path.join(workdir, "again")
        os.makedirs(rerun)
        again = TwistdServer(rerun, ["--handler", f"sqlite:{path}"])
        self.addCleanup(again.kill)
        sock = again.connect()
        sock.sendall(submitFrame(7, b"after the restart"))
        self.assertEqual(recvExactly(sock, 14), ackFrame(7))
        sock.close()
        self.assertEqual(again.terminate(), 0, again.log())
        after = dumpIds(path)
        self.assertEqual(after[: len(stored)], stored)
        self.assertEqual(after[len(stored) :], [b"%08d" % 7])
