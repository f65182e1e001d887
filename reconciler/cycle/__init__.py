"""The reconcile cycle as four stages, in the order they run:

    plan.py         reads only: the watchlist, the registries, what is published -> a Plan
    fetch_stage.py  the plan's blobs present in the blob store, pinned for the cycle
    build.py        images built and tags set inside the publisher's transaction
    record.py       the state database written from the outcomes

`outcome.py` holds the records they pass along; the fetch and build stages
return what they did (`results.py`), and `results.cycle_report` applies it to
the plan's outcomes in one place. `reconciler.reconcile.Reconciler`
wires them (and owns the locks, the clients and the recovery at start).
"""
