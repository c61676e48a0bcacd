"""The poller's one seam to the outside: a transport-neutral Publisher over a durable outbox."""
