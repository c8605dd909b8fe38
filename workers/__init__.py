"""Running operations against the engine: the executor, and the model-resident RQ worker.

* ``workers.executor``: ``EngineExecutor`` runs one operation (or a batch) by its
  kind's registered handler (``training_app.handlers``, ``sampling_app.handlers``)
  and records the outcome; used by the embedded lanes (``dispatch.embedded``) and
  by RQ workers alike.
* ``workers.handoff``: run leases, automatic checkpoints, restore and replay when a
  run moves between distributed workers.
* ``workers.runtime``: a distributed worker process's state (``WorkerRuntime``):
  its engine, the runs it holds, draining a run, its maintenance thread.
* ``workers.reaper``: queues again what no job will pick up (lost jobs, dead workers).
* ``workers.rq_worker``: the ``TuftWorker`` RQ worker class and the job entry points.
"""
