"""
tcpdemo: a Submit/SubmitAck TCP server on Twisted, byte-compatible with the
Go reference "tcp-server-demo".
"""

__version__ = "0.1.0"
