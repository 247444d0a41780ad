"""
The C{twistd tcpdemo} plugin.  A L{ServiceMaker} names the module that
holds C{Options} and C{makeService} (L{tcpdemo.tap}) and imports it only
when twistd runs or describes the server, so listing plugins stays cheap
and loads none of the server.
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "tcpdemo",
    "tcpdemo.tap",
    "Serve the tcpdemo Submit/SubmitAck protocol, with Prometheus metrics.",
    "tcpdemo",
)
