"""
The plugin that makes C{twistd tcpdemo --handler sizelimit:BYTES} work.

twistd imports every module in every C{twisted/plugins/} directory on
C{sys.path} to list plugins, so this one stays light: the handler module
(and its Prometheus counter) is imported only in L{makeHandler}.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from tcpdemo.handlers import IHandlerMaker, ISubmitHandler


@implementer(IHandlerMaker, IPlugin)
class SizeLimitMaker:
    name = "sizelimit"
    description = "result 3 for payloads longer than ARG bytes, 0 for the rest; counts results"

    def makeHandler(self, argument: str | None, reactor: Any) -> ISubmitHandler:
        from tcpdemo_sizelimit import SizeLimitHandler, parseLimit

        return SizeLimitHandler(parseLimit(argument))


#: What twisted.plugin.getPlugins(IHandlerMaker) finds: any module-level
#: object providing the interface.
sizeLimitMaker = SizeLimitMaker()
