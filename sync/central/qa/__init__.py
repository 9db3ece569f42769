"""Quality assessment at the central store, sans-IO: evaluation forms, scoring, the
evaluation life cycle, dashboard figures and their SVG charts.

Nothing here opens a file, a socket or a database: the index's tables are in
:mod:`~linetap.sync.central.qaindex`, the pages in ``sync/central/web``.
"""
