"""The model evaluation store: daily mergeable profiles, evaluation windows from them, reports per window."""
