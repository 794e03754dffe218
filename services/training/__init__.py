"""The training service: datasets, LoRA/QLoRA jobs on a Postgres queue, model artifacts,
clones and notifications. It reads top-down:

- server.py: wiring (store → domain → servicers), start-up and stop.
- api_datasets / api_jobs / api_models / api_clones / api_notifications: one servicer per
  proto service; thin handlers (request → domain → proto, convert.py builds the protos).
- datasets / jobs / artifacts / clones / notifications: the domain; lifecycle.py is the
  job state machine, checks.py the shared request checks.
- store.py: all SQL (typed rows); migrations/: the schema.
- worker.py: the training worker; plan / data / hyper / executors / session /
  basemodels: what it trains with. hub.py: NOTIFY wake-ups for watchers and workers.
- Other services: storage through services.common.remote.StorageClient, RAG through
  knowledge.py.
"""
