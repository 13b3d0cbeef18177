"""Notifications: channels (SMTP, Slack webhook, file), the delivery outbox, acknowledgements and
silences. Plain Python; the sensors and the jobs in `notify.defs` wire it
into Dagster."""
