"""Flow runners: how a claimed run is started and supervised (subprocess, Docker, in-process…).

Runners know nothing of backends; the daemon hands them a :class:`runners.base.RunSpec` and owns
every policy (timeout, cancellation grace, drain) through the small :class:`RunHandle` interface.
"""
