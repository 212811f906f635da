"""TOVA's metrics, split as vLLM's own ``vllm.v1.metrics`` is.

* ``stats``: what the engine did with the KV cache, counted per step in EngineCore and carried
  to the front end in vLLM's ``SchedulerStats`` (``TovaStats``, ``TovaSchedulerStats``,
  ``TovaEngineCoreOutputs``, ``EvictionCounter``).
* ``loggers``: ``TovaStatLogger``, the ``vllm.stat_logger_plugins`` entry that exports those
  numbers as Prometheus series on the API server's ``/metrics``.
"""
