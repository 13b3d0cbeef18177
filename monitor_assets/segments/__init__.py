"""Per-segment performance: each model judged per market, channel, device (or their crosses)."""
