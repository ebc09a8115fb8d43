"""Pure, I/O-free core of relayhouse: frames to events, topics, cache, resume, wire formats."""
