"""The training service: datasets, LoRA/QLoRA jobs on a Postgres queue, model artifacts,
clones, notifications and webhooks, what training costs and what it may use. It reads
top-down:

- server.py: wiring (store → domain → servicers), start-up and stop.
- api_datasets / api_jobs / api_models / api_clones / api_notifications / api_catalogue /
  api_billing / api_webhooks / api_admin: one servicer per proto service; thin handlers
  (request → domain → proto, convert.py builds the protos).
- datasets / jobs / artifacts / clones / notifications / webhooks / admin: the domain;
  lifecycle.py is the job state machine, checks.py the shared request checks.
- catalogue.py (allowed base models and hardware classes, described by the shared
  services.common.catalogue), estimates.py (tokens, steps, time, cost, memory of a job
  before it runs), billing.py (quotas, budgets, costs by month), events.py (webhook
  bodies).
- store.py: all SQL (typed rows); migrations/: the schema.
- worker.py: the training worker; plan / data / hyper / executors / session /
  basemodels: what it trains with. hub.py: NOTIFY wake-ups for watchers, workers and the
  webhook deliverer.
- Other services: storage through services.common.remote.StorageClient, RAG through
  knowledge.py.
"""
