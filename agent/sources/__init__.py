"""Deployments that bring their code: a git source fetched through one mirror per host.

    git.py        running git: credentials through the environment, errors translated
    mirror.py     one bare mirror per repository per host: ls-remote, fetch under a file lock
    checkout.py   a run's own directory, and ``git archive`` of a commit into a tree
    trees.py      a commit or bundle unpacked once per host, sealed read-only, copied per run
    spares.py     the next copy of a tree, made ahead of the run that takes it
    cache.py      what the supervisor calls: prepare a run's code, release it
    inventory.py  list and prune what the host caches

Layout under ``$AGENT_HOME``::

    sources/git/<key>/          bare mirror of one repository (key: sha256 of its URL)
    sources/git/<key>.json      its URL (never a token), last fetch, last use
    sources/git/<key>.lock      flock held while it is created or fetched
    sources/git/<key>.use       flock held (shared) while a run resolves, exports or copies
    sources/trees/git/<key>/<commit>/           one commit's files, read-only
    sources/trees/git/<key>/<commit>.manifest   written last: the tree is complete
    sources/trees/bundles/<hex>/ (+ .manifest)  one bundle's files, read-only
    agents/<name>/checkouts/<run id>/   one run's files (per agent: a restarted agent
                                        removes its dead runs' checkouts, no one else's)
    agents/<name>/spares/<random>/      copies of trees made ahead for this agent's next runs
"""
