"""
The C{twistd tcpdemo} plugin.  Imports of the server are deferred to
C{makeService}, so that listing plugins stays cheap and installs no reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

from tcpdemo.service import Options


@implementer(IServiceMaker, IPlugin)
class TcpDemoServiceMaker:
    tapname = "tcpdemo"
    description = "Serve the tcpdemo Submit/SubmitAck protocol, with Prometheus metrics."
    options = Options

    def makeService(self, options: Options) -> Any:
        from tcpdemo.service import makeService

        return makeService(options)


serviceMaker = TcpDemoServiceMaker()
