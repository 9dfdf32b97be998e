"""The worker process: lease a trial over HTTP, fine-tune, report, repeat.

Never imports ``service/``: everything it knows about the service is the
protocol in ``tunefleet.protocol``. Run it as ``tunefleet worker`` or
``python -m workers`` (same options).
"""
