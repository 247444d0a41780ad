"""
The built-in handlers as Twisted plugins (L{IHandlerMaker}), for
C{twistd tcpdemo --handler NAME[:ARG]} and C{tcpdemo-dump NAME[:ARG]}.
Each handler's module is imported only when that handler is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from tcpdemo.handlers import IHandlerMaker, IStoreReader, ISubmitHandler


@implementer(IPlugin, IHandlerMaker)
class AckMaker:
    name = "ack"
    description = "Acknowledge every Submit with result 0, storing nothing (the default)."

    def makeHandler(self, argument: str | None, reactor: Any) -> ISubmitHandler:
        from tcpdemo.handlers.ack import makeAckHandler

        return makeAckHandler(argument, reactor)


@implementer(IPlugin, IHandlerMaker, IStoreReader)
class SqliteMaker:
    name = "sqlite"
    description = (
        "sqlite:PATH -- store every Submit in an SQLite file (WAL, synchronous=FULL) "
        "and ack it once committed."
    )
    #: One writer per file: refused with --workers N > 1.
    singleProcess = True

    def makeHandler(self, argument: str | None, reactor: Any) -> ISubmitHandler:
        from tcpdemo.handlers.sqlite import makeSqliteHandler

        return makeSqliteHandler(argument, reactor)

    def readStored(self, argument: str | None) -> Iterable[dict[str, Any]]:
        from tcpdemo.handlers.sqlite import readStored

        return readStored(argument)


@implementer(IPlugin, IHandlerMaker, IStoreReader)
class JetStreamMaker:
    name = "jetstream"
    description = (
        "jetstream:nats://HOST:PORT[,...][?stream=NAME&subject=S&replicas=N] -- store "
        "every batch of Submits in a NATS JetStream stream and ack once it is replicated "
        "(needs pip install tcpdemo[jetstream])."
    )

    def makeHandler(self, argument: str | None, reactor: Any) -> ISubmitHandler:
        from tcpdemo.handlers.jetstream import makeHandler

        return makeHandler(argument, reactor)

    def readStored(self, argument: str | None) -> Iterable[dict[str, Any]]:
        from tcpdemo.handlers.jetstream import readStored

        return readStored(argument)


ack = AckMaker()
sqlite = SqliteMaker()
jetstream = JetStreamMaker()
