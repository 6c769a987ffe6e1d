"""Deployments that bring their code: a git source fetched through one mirror per host.

    git.py        running git: credentials through the environment, errors translated
    mirror.py     one bare mirror per repository per host, fetched under a file lock
    checkout.py   a run's own export of one commit, removed when the run ends
    cache.py      what the supervisor calls: prepare a run's code, release it, list, prune

Layout under ``$AGENT_HOME``::

    sources/git/<key>/          bare mirror of one repository (key: sha256 of its URL)
    sources/git/<key>.json      its URL (never a token), last fetch, last use
    sources/git/<key>.lock      flock held while it is created or fetched
    agents/<name>/checkouts/<run id>/   one run's files (per agent: a restarted agent
                                        removes its dead runs' checkouts, no one else's)
"""
