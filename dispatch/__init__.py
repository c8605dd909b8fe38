"""Scheduling core shared by every dispatch back end: plain Python, no Django, no threads.

* ``dispatch.ordering``: the per-run ``seq_id`` rule (which operation of a run may start).
* ``dispatch.scheduler``: which ready operations run next, and together (round-robin by
  tenant, batches under a token budget).

The back ends that use them (threads in the server process, RQ workers) live in
``dispatch.embedded`` and ``workers.runtime``.
"""
