"""Stream wiring: settings, the faust app, topics, local infrastructure and the CLI."""
