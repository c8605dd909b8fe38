"""Running operations against the engine: the executor, and the model-resident RQ worker.

* ``workers.executor``: ``EngineExecutor`` runs one operation (or a batch) by its
  kind's registered handler and records the outcome; used by the embedded lanes
  (``dispatch.embedded``) and by RQ workers alike.
* ``workers.handoff``: run leases, automatic checkpoints, restore and replay when a
  run moves between distributed workers.
* ``workers.runtime``: the distributed worker's process state, its maintenance
  thread and reaper, and the ``TuftWorker`` RQ worker class.
"""
