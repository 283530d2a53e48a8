"""Durable retry queue (imported as ``cbec_queue``; the folder is ``queue/``)."""
