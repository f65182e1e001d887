"""The long-running reconciler (`reconcile` without --once), one concern a module:

    run.py           serve(): the scheduler and the listener until SIGTERM/SIGINT
    scheduler.py     Service: polls at intervals, nudges, retries; one runner thread runs the cycles
    status.py        the /status data (and iso_utc, its one time format)
    metrics.py       the Prometheus metrics of /metrics
    app.py           the Starlette app: webhooks, /healthz, /metrics, /status, the page
    bodies.py        reading webhook bodies within a byte budget and a deadline; the drain
    limits.py        ListenerLimits: the listener's timeouts and caps
    listener.py      uvicorn with head deadlines, a connection cap and our shutdown
    page.py          the status page's HTML, rendered from the /status data
    hook_secrets.py  reading the webhook secrets at the start

Nothing is imported here: the command line imports hook_secrets and run
lazily, so `--once` and `--dry-run` never load uvicorn, APScheduler or Starlette.
"""
