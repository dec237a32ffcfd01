"""The browser dashboard: overview, executions, one execution (and limits / approvals where those exist).

``queries`` computes every number (pages, JSON API and ``report --html`` share it),
``render`` and ``charts`` make the HTML and inline SVG on the server, ``web`` serves it
(mounted by ``wflo-otel serve``; ``wflo-otel ui`` runs it alone, see ``server``),
``report`` writes the self-contained HTML file. See docs/dashboard.md.
"""
