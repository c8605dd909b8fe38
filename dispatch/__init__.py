"""Dispatch: hand recorded operations to whatever executes them, in per-run seq order.

The domain (``training_app.actions``, ``sampling_app.actions``) calls only
``dispatch.registry.get_dispatcher()``. Django-free scheduling core (plain
Python, no threads, unit-tested on its own):

* ``dispatch.ordering``: the per-run ``seq_id`` rule (which operation of a run may start).
* ``dispatch.scheduler``: which ready operations run next, and together (round-robin by
  tenant, batches under a token budget).

Back ends and plumbing (Django):

* ``dispatch.embedded``: lane threads in the server process (the default).
* ``dispatch.distributed``: the API side of Redis mode (enqueue, completion events).
* ``dispatch.queues``: Redis names, enqueueing, the ``Backend`` configuration.
* ``dispatch.completions``: the completion hub that wakes long-polling ``retrieve_future``.

What runs the operations (the executor, RQ workers) is the ``workers`` package.
"""
