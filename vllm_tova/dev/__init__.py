"""Development helpers, apart from the runtime plugin: nothing here is loaded by the plugin
at run time (``register()``, the patches, the scheduler or the backends).

* ``assets``: fetches and caches the model and texts the tests and benchmarks use
  (SmolLM2-135M-Instruct, Jane Austen's novels); ``python -m vllm_tova.dev.assets``.
* ``runs``: engine run statistics: runs a batch through an LLM step by step and reads vLLM's
  scheduler stats (used by the demo, the tests and the benchmarks).
* ``demo``: stock vLLM against TOVA on one KV pool; ``python -m vllm_tova.dev.demo``
  (``make demo``).
"""
