"""The reconcile cycle as four stages, in the order they run:

    plan.py         reads only: the watchlist, the registries, what is published -> a Plan
    fetch_stage.py  the plan's blobs present in the blob store, pinned for the cycle
    build.py        images built and tags set inside the publisher's transaction
    record.py       the state database written from the outcomes

`outcome.py` holds the records they pass along. `reconciler.reconcile.Reconciler`
wires them (and owns the locks, the clients and the recovery at start).
"""
