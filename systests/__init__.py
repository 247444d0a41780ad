"""
Slow system tests: real clusters, proxies and stores, SIGKILLs under load.

tox runs them in the py311 and pypy39 envs only (tox.ini); every test here
needs its binaries (nats-server, haproxy, ...) and fails, never skips, when
one is missing.  They use the helpers of L{tests.support}.
"""
