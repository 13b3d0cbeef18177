"""Notifications: channels (SMTP, Slack webhook, file), the delivery outbox, and the decisions that
acknowledge and silence alerts (their state is kept by `storage.alert_state`). Plain Python; the sensors
and the jobs in `notify.defs` wire it into Dagster."""
