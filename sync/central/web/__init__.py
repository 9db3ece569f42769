"""The QA console: ``linetap-central web``, a Starlette app over the same index and object store as the CLI.

:mod:`~linetap.sync.central.web.app` builds the app from each feature
module's ``routes()``; :mod:`~linetap.sync.central.web.access` holds the one
table of which role may use which route and the scope of recordings each user
may see; :mod:`~linetap.sync.central.web.audit` appends every login, search,
play, download and change to the hash-chained access log. Nothing here is
imported by the index, so importing this package costs nothing to the CLI.
"""
