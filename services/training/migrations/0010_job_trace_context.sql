-- The W3C trace context (traceparent, tracestate) of the request that created a job, so
-- the worker that runs it continues that trace (services/common/tracing.py). NULL while
-- tracing is off.
ALTER TABLE training_jobs ADD COLUMN trace_context jsonb;
