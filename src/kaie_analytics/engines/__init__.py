"""Event engines: where events are stored and how the facts are computed."""
