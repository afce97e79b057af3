"""The daemon: the command line, the run drivers, the supervisor and its workers, reloads,
systemd notification, logging set-up and the metrics endpoint. The top layer: nothing in
trioscgi imports it (docs/architecture.md)."""
