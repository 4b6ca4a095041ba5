-- Traces that follow an event (`[telemetry]`, src/observe/traces.rs): the enrollment flow
-- may store the W3C trace context of the transaction that wrote the event, and the
-- delivery's spans continue that trace. Optional: NULL starts a trace of its own, and so
-- does a value that is not a valid `traceparent` (it is ignored, never an error).
--
-- A nullable column without a default is a catalog-only change: no row is rewritten, and
-- the outbox is locked only for the moment the catalog changes. The insert trigger
-- (dispatcher.notify_outbox, per statement) reads no column, so it is unchanged.
ALTER TABLE dispatcher.outbox ADD COLUMN traceparent text;
