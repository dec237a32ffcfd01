"""Workflow controls: checkpoints and resume, rollback with compensations, approval gates.

Each control is a row in SQL (the tables of ``schema``, written by ``store``
synchronously, so a checkpoint is durable when it returns) and a span or event in the
trace. The user-facing API is on ``wflo_otel.workflow()`` / ``step()`` (``runtime``).
"""
