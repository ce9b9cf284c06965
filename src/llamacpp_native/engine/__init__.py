"""The engine: request and event types, the scheduling policy (pure Python), the decode loop that
executes it, the consumer side of a request (tokens to text) and the output processor (chunks to events)."""
