"""Outbound adapters: deliver queue jobs to customs (DXP over HTTP or a transfer-client folder), an
inspection service, a warehouse and sellers' webhooks. See docs/adapters.md.

Every adapter implements :class:`adapters.base.Adapter` (``name``, ``async send(job_payload)``) and raises
``cbec_queue.TransientError`` / ``cbec_queue.PermanentError`` on failure.
"""
