"""Events and webhooks: the outbox reader, the event log, signed deliveries with retries."""
