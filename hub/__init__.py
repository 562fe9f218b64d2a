"""The control-room hub: ingest, registry and live state, storage, commands, REST API."""
